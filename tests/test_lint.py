"""The code follows style.md's tooling: ruff (F, E, W, I, UP, B, TID, NPY, RUF; pyproject.toml)
and ruff-format. TID251 also enforces the layering: ``kernels/``, ``plan.py`` and
``geometry.py`` never import dask, distributed, xarray or zarr."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["coaddx", "tests", "benchmarks"]


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "command", [("check", "--output-format", "concise"), ("format", "--check")]
)
def test_ruff(command):
    result = _ruff(*command, *PATHS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("coaddx/kernels/probe.py", True),
        ("coaddx/plan.py", True),
        ("coaddx/geometry.py", True),
        ("coaddx/graph.py", False),
        ("coaddx/io/zarr.py", False),
    ],
)
def test_layering_is_enforced(path, refused):
    """An import of dask is refused in the leaves and allowed above them: the rule is
    live, not just configured. The probe goes through stdin; nothing is written."""
    source = '"""Probe."""\n\nimport dask\n\n__all__ = ["dask"]\n'
    result = _ruff(
        "check", "--output-format", "concise", "--stdin-filename", path, "-", stdin=source
    )
    assert ("TID251" in result.stdout) is refused, result.stdout
    assert result.returncode == (1 if refused else 0), result.stdout + result.stderr
