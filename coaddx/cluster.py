"""``coaddx.cluster``: the public name of the cluster helpers (:mod:`coaddx.runtime.cluster`).

``coaddx.cluster.local()``, ``coaddx.cluster.connect("slurm", ...)`` and the rest, as documented
in the README and ``cluster/README.md``.
"""

from __future__ import annotations

from coaddx.runtime.cluster import *  # noqa: F403
from coaddx.runtime.cluster import __all__  # noqa: F401
