"""The simulator: calexps and warps of a scene with ground truth (support: never imported by the
library's own layers)."""
