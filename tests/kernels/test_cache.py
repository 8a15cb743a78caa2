"""The kernel cache: keyed on source content (file copies and touches keep it, edits drop it,
edits of an imported module too), compiled for a portable CPU, with a precompile marker."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import llvmlite.binding as ll
import pytest

import coaddx
from coaddx.kernels import ContentLocator, compile_seconds, precompiled

# One fresh interpreter per run (numba keeps compiled code per process). The package "kpkg" is
# put under ContentLocator's roots the way coaddx is.
RUN = textwrap.dedent(
    """
    import sys, json
    from pathlib import Path
    from coaddx.kernels import ContentLocator, compile_seconds
    root = Path(sys.argv[1]) / "kpkg"
    ContentLocator.roots.append(root)
    sys.path.insert(0, sys.argv[1])
    from kpkg import kern
    value = kern.scaled(2.0)
    from numba.core.registry import cpu_target
    print(json.dumps({
        "value": value,
        "hits": sum(kern.scaled.stats.cache_hits.values()),
        "misses": sum(kern.scaled.stats.cache_misses.values()),
        "compile_s": compile_seconds(),
        "cpu": cpu_target.target_context.codegen().magic_tuple()[1],
        "locator": type(kern.scaled._cache._impl.locator).__name__,
    }))
    """
)

KERN = textwrap.dedent(
    """
    import numba
    from kpkg.consts import FACTOR

    @numba.njit(cache=True)
    def scaled(x):
        return FACTOR * x
    """
)


def _run(base: Path, **env: str) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", RUN, str(base)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _package(base: Path, factor: float = 3.0) -> Path:
    pkg = base / "kpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "consts.py").write_text(f"FACTOR = {factor}\n")
    (pkg / "kern.py").write_text(KERN)
    return pkg


def _copy_without_times(src: Path, dst: Path) -> None:
    """Copy a tree the way pip or a plain ``cp`` does: new mtimes on every file."""
    for p in src.rglob("*"):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("NUMBA_CACHE_DIR", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "COADDX_NUMBA_CPU"):
        monkeypatch.delenv(var, raising=False)


def test_touching_keeps_the_cache_and_editing_drops_it(tmp_path, clean_env):
    pkg = _package(tmp_path / "a")
    first = _run(tmp_path / "a")
    assert first == {**first, "value": 6.0, "hits": 0, "misses": 1, "locator": "ContentLocator"}
    assert first["compile_s"] > 0
    assert list((pkg / "__pycache__").glob("kern.scaled-*.nbi"))

    again = _run(tmp_path / "a")
    assert (again["hits"], again["misses"], again["compile_s"]) == (1, 0, 0.0)

    # a new mtime, the same bytes: still a hit (numba <= 0.6x stamps mtime + size)
    for f in pkg.glob("*.py"):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**12))
    touched = _run(tmp_path / "a")
    assert (touched["hits"], touched["misses"]) == (1, 0)

    # a copy of the whole tree, cache included, with new file times: a hit in the copy
    _copy_without_times(tmp_path / "a", tmp_path / "b")
    copied = _run(tmp_path / "b")
    assert (copied["hits"], copied["misses"], copied["value"]) == (1, 0, 6.0)

    # an edit of the kernel's file: a miss
    (pkg / "kern.py").write_text(KERN + "\n# edited\n")
    edited = _run(tmp_path / "a")
    assert (edited["hits"], edited["misses"]) == (0, 1)

    # an edit of a module it imports (numba froze FACTOR into the machine code): a miss, and
    # the new value (numba's own stamp would have returned the stale 6.0)
    (pkg / "consts.py").write_text("FACTOR = 5.0\n")
    dep = _run(tmp_path / "a")
    assert (dep["hits"], dep["misses"], dep["value"]) == (0, 1, 10.0)


def test_numba_cache_dir_is_shared_by_copies_of_the_package(tmp_path, clean_env):
    cache = tmp_path / "cache"
    _package(tmp_path / "a")
    _package(tmp_path / "b")
    first = _run(tmp_path / "a", NUMBA_CACHE_DIR=str(cache))
    assert (first["hits"], first["misses"]) == (0, 1)
    assert list((cache / "kpkg").glob("kern.scaled-*.nbi"))
    assert not (tmp_path / "a" / "kpkg" / "__pycache__").exists()
    other = _run(tmp_path / "b", NUMBA_CACHE_DIR=str(cache))
    assert (other["hits"], other["misses"]) == (1, 0)


V3 = {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave", "popcnt", "sse4.2"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


@pytest.mark.skipif(
    not all(ll.get_host_cpu_features().get(f, False) for f in V3), reason="host is not x86-64-v3"
)
def test_the_cpu_target_is_portable_unless_chosen(tmp_path, clean_env):
    _package(tmp_path / "a")
    v4 = all(ll.get_host_cpu_features().get(f, False) for f in V4)
    assert _run(tmp_path / "a")["cpu"] == ("x86-64-v4" if v4 else "x86-64-v3")
    native = _run(tmp_path / "a", COADDX_NUMBA_CPU="native")
    assert native["cpu"] == ll.get_host_cpu_name()
    assert native["misses"] == 1  # another CPU: another entry, not the portable one
    assert _run(tmp_path / "a", NUMBA_CPU_NAME="generic")["cpu"] == "generic"


def test_compile_seconds_counts_compiling_not_running():
    import numba

    @numba.njit
    def add(a, b):
        return a + b

    before = compile_seconds()
    add(1.0, 2.0)
    compiled = compile_seconds() - before
    assert compiled > 0
    add(3.0, 4.0)  # compiled already: no time added
    assert compile_seconds() - before == compiled


def test_precompiled_is_false_when_no_marker_matches(tmp_path, monkeypatch):
    # an empty cache folder: no marker, so a cold run is detected
    monkeypatch.setattr(ContentLocator, "roots", [Path(coaddx.__file__).parent])
    import numba.core.config as numba_config

    monkeypatch.setattr(numba_config, "CACHE_DIR", str(tmp_path))
    assert precompiled() is False
