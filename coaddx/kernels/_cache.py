"""numba's on-disk cache for coaddx's kernels: keyed on source content, built for a portable CPU.

Imported by ``coaddx.kernels`` before any kernel is defined, this module does two things.

* **A locator keyed on content, not file times.** numba up to 0.6x stamps a cache entry with
  its source file's mtime and size, so a copy of the tree (pip, rsync, a container build) makes
  every entry stale. :class:`ContentLocator` stamps it with the SHA-256 of the kernel's file
  *and of every coaddx module that file imports* (numba freezes imported globals such as
  ``coaddx.constants`` and inlines other files' kernels, so editing those must invalidate the
  entry too; numba's own stamp misses that). The entries live in the package's
  ``__pycache__`` folders, or under ``NUMBA_CACHE_DIR`` at a path relative to the package, so
  two copies of the package share one cache directory. Touching a file keeps its entries,
  changing its content drops them.
* **A portable CPU target.** Unless ``NUMBA_CPU_NAME`` is set, the kernels are compiled for
  ``x86-64-v3`` (AVX2 + FMA; ``generic`` is ~20 % slower) when the host supports it, or for
  ``x86-64-v4`` with 512-bit vectors where it has AVX-512 (the stacking kernels run up to 40 %
  faster there), so one cache serves every node of a cluster that shares the install (numba
  keys entries on the CPU name and features: a mixed cluster keeps one entry per level).
  ``COADDX_NUMBA_CPU=native`` keeps numba's default (the host's own model and features).

:func:`precompiled` / :func:`mark_precompiled` record that a precompile run has filled the cache
for the current sources (``coaddx precompile``, or the background one ``coaddx demo`` starts).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import llvmlite.binding as ll

PORTABLE_CPU = "x86-64-v3"
#: Where the host has AVX-512 (F, BW, CD, DQ, VL): x86-64-v4, with 512-bit vectors (LLVM's
#: generic v4 tuning prefers 256-bit ones; "-prefer-256-bit" lifts that). On the project's
#: Zen 5 VM it stacks "meanclip" 35-40 % faster than v3 (one thread, 64 visits in memory) with
#: the same results bit for bit.
PORTABLE_CPU_AVX512 = ("x86-64-v4", "-prefer-256-bit")
# x86-64-v3 = v2 (cx16, lahf/sahf, popcnt, sse3, sse4.1, sse4.2, ssse3) + these (LLVM's names)
_V3_FEATURES = frozenset(
    "cx16 sahf popcnt sse3 sse4.1 sse4.2 ssse3 avx avx2 bmi bmi2 f16c fma lzcnt movbe xsave".split()
)
_V4_FEATURES = _V3_FEATURES | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the coaddx package folder
_MARKER = "coaddx-precompiled.json"


def _choose_cpu() -> str | None:
    """Set numba's CPU target to :data:`PORTABLE_CPU` when nobody chose one and the host runs it.

    Must run before numba creates its CPU target (the first ``@njit`` in the process); the
    environment variables also reach the processes this one starts (dask workers). Returns
    the CPU name chosen, or None where numba's default stays.
    """
    if "NUMBA_CPU_NAME" in os.environ or os.environ.get("COADDX_NUMBA_CPU") == "native":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    numba_mod = sys.modules.get("numba.core.registry")
    if numba_mod is not None and "_toplevel_target_context" in vars(numba_mod.cpu_target):
        return None  # numba already built its target machine: too late to change it
    features = ll.get_host_cpu_features()
    if not all(features.get(f, False) for f in _V3_FEATURES):
        return None
    name, extra = PORTABLE_CPU, ""
    if all(features.get(f, False) for f in _V4_FEATURES):
        name, extra = PORTABLE_CPU_AVX512
    os.environ["NUMBA_CPU_NAME"] = name
    os.environ["NUMBA_CPU_FEATURES"] = extra
    if "numba.core.config" in sys.modules:
        sys.modules["numba.core.config"].reload_config()
    return name


CPU_CHOSEN = _choose_cpu()

import numba  # noqa: E402  (after the CPU target is chosen)
from numba.core import caching  # noqa: E402
from numba.core import config as _numba_config  # noqa: E402
from numba.core.registry import cpu_target  # noqa: E402

config: Any = _numba_config

_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()
_KERNEL_FILES: set[str] = set()  # every file a kernel defined in this process depends on


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (memoised on path, mtime and size within this process)."""
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _HASH_LOCK:
        found = _HASHES.get(key)
    if found is None:
        found = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        with _HASH_LOCK:
            _HASHES[key] = found
    return found


def _module_file(name: str) -> str | None:
    """The source file of an imported coaddx module (None for packages and other modules)."""
    mod = sys.modules.get(name)
    f = getattr(mod, "__file__", None)
    if mod is None or not f or hasattr(mod, "__path__") or not f.endswith(".py"):
        return None
    return os.path.abspath(f)


def _imports(py_file: str, module_name: str) -> set[str]:
    """The modules of its own package ``py_file`` imports (``from a.b import c``: ``a.b.c``
    when that is a module, else ``a.b``; relative imports resolved against ``module_name``)."""
    tree = ast.parse(Path(py_file).read_bytes())
    package = module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                sub = f"{base}.{a.name}"
                names.add(sub if sub in sys.modules else base)
    top = module_name.partition(".")[0]  # coaddx (or a test's package)
    return {n for n in names if n == top or n.startswith(top + ".")}


@functools.cache
def _dependencies(py_file: str, module_name: str) -> tuple[str, ...]:
    """``py_file`` and the coaddx source files it imports, transitively (sorted). numba freezes
    imported constants and compiles imported kernels into the caller, so their content is part
    of what a cache entry was built from. Packages' ``__init__`` files are not followed."""
    seen = {py_file}
    todo = [(py_file, module_name)]
    while todo:
        f, name = todo.pop()
        for dep in _imports(f, name):
            dep_file = _module_file(dep)
            if dep_file is not None and dep_file not in seen:
                seen.add(dep_file)
                todo.append((dep_file, dep))
    return tuple(sorted(seen))


class ContentLocator(caching._CacheLocator):
    """A numba cache locator for the kernels under :attr:`roots` (the coaddx package).

    Stamp: the SHA-256 of the kernel's file and of the coaddx files its module imports.
    Place: ``<dir>/__pycache__`` beside the source, or ``NUMBA_CACHE_DIR/<path relative to the
    root>`` when that is set. Files outside the roots fall through to numba's own locators.
    """

    roots: list[Path] = [PACKAGE_ROOT]  # noqa: RUF012  (tests add their own package)

    def __init__(self, py_func: Any, py_file: str, root: Path) -> None:
        self._py_file = os.path.abspath(py_file)
        self._lineno = py_func.__code__.co_firstlineno
        self._deps = _dependencies(self._py_file, py_func.__module__)
        with _HASH_LOCK:
            _KERNEL_FILES.update(self._deps)
        rel = Path(self._py_file).parent.relative_to(root)
        if config.CACHE_DIR:
            self._cache_path = os.path.join(config.CACHE_DIR, root.name, *rel.parts)
        else:
            self._cache_path = os.path.join(os.path.dirname(self._py_file), "__pycache__")

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        h = hashlib.sha256()
        for f in self._deps:
            h.update(file_hash(f).encode())
        return h.hexdigest()

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> ContentLocator | None:
        path = Path(os.path.abspath(py_file))
        for root in cls.roots:
            if path.is_file() and path.is_relative_to(root.resolve()):
                self = cls(py_func, str(path), root.resolve())
                try:
                    self.ensure_cache_path()
                except OSError:
                    return None  # read-only install: numba's user-wide locator takes over
                return self
        return None


def _register() -> None:
    """Put :class:`ContentLocator` first in numba's list (its subclasses inherit the list)."""
    impl: Any = caching.CacheImpl
    if ContentLocator not in impl._locator_classes:
        impl._locator_classes = [ContentLocator, *impl._locator_classes]


_register()


def cache_key() -> dict[str, str]:
    """What a precompiled cache is valid for besides the sources: numba, Python, CPU target."""
    triple, cpu, features = cpu_target.target_context.codegen().magic_tuple()
    return {
        "numba": numba.__version__,
        "python": sys.version.split()[0],
        "cpu": f"{triple} {cpu} {features}",
    }


def _marker_path() -> Path:
    base = Path(config.CACHE_DIR) / PACKAGE_ROOT.name if config.CACHE_DIR else None
    return (base or PACKAGE_ROOT / "__pycache__") / _MARKER


def _kernel_files() -> list[str]:
    """The coaddx files the kernels defined so far in this process depend on."""
    with _HASH_LOCK:
        return sorted(_KERNEL_FILES)


def mark_precompiled(seconds: float) -> Path:
    """Record that the cache holds the kernels of the current sources (after a precompile)."""
    files = {os.path.relpath(f, PACKAGE_ROOT): file_hash(f) for f in _kernel_files()}
    data = {**cache_key(), "seconds": round(seconds, 2), "when": time.time(), "files": files}
    path = _marker_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def precompiled() -> bool:
    """Whether a precompile run filled the cache for these sources, numba, Python and CPU."""
    try:
        data = json.loads(_marker_path().read_text())
    except (OSError, ValueError):
        return False
    if any(data.get(k) != v for k, v in cache_key().items()):
        return False
    files = data.get("files") or {}
    try:
        return bool(files) and all(
            file_hash(PACKAGE_ROOT / rel) == digest for rel, digest in files.items()
        )
    except OSError:
        return False


class _CompileClock(numba.core.event.Listener):
    """Wall time spent in numba compilations (outermost ones only) in this process."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()

    def on_start(self, event: Any) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.t0 = time.perf_counter()
        self._local.depth = depth + 1

    def on_end(self, event: Any) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            with self._lock:
                self.seconds += time.perf_counter() - self._local.t0


_CLOCK = _CompileClock()
numba.core.event.register("numba:compile", _CLOCK)


def compile_seconds() -> float:
    """Seconds this process has spent compiling numba kernels so far (cache loads excluded)."""
    return _CLOCK.seconds
