"""The code follows style.md's tooling and design.md's layering.

* ruff (F, E, W, I, UP, B, TID, NPY, RUF; pyproject.toml) and ruff-format; ruff's TID251 keeps
  dask, distributed, xarray and zarr out of ``kernels/``, ``model/``, ``plan.py``,
  ``constants.py`` and ``errors.py``.
* import-linter (``[tool.importlinter]`` in pyproject.toml): the layers contract (interfaces >
  support > steps > graph, io > model, plan > kernels), no import cycle between the subpackages
  of any package, private modules stay private, and no step, kernel or model module imports dask.
* mypy over ``coaddx/`` (the package ships ``py.typed``).

Each rule is also shown to be live: a probe that breaks it is refused.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["coaddx", "tests", "benchmarks"]
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path = ROOT, stdin: str | None = None, env: dict | None = None):
    return subprocess.run(
        list(args), cwd=cwd, input=stdin, capture_output=True, text=True, check=False, env=env
    )


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "ruff", *args, stdin=stdin)


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
        ("coaddx/model/geometry.py", True),
        ("coaddx/graph/stack.py", False),
        ("coaddx/io/zarr/probe.py", False),
    ],
)
def test_layering_is_enforced_by_ruff(path, refused):
    """An import of dask is refused in the lower layers and allowed above them: the rule is
    live, not just configured. The probe goes through stdin; nothing is written."""
    source = '"""Probe."""\n\nimport dask\n\n__all__ = ["dask"]\n'
    result = _ruff(
        "check", "--output-format", "concise", "--stdin-filename", path, "-", stdin=source
    )
    assert ("TID251" in result.stdout) is refused, result.stdout
    assert result.returncode == (1 if refused else 0), result.stdout + result.stderr


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    exe = BIN / "lint-imports"
    return _run(str(exe), "--no-cache", str(root / "pyproject.toml"), cwd=root, env=env)


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """A copy of the package and its pyproject.toml, for probes that break a contract."""
    root = tmp_path_factory.mktemp("probe")
    shutil.copytree(ROOT / "coaddx", root / "coaddx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    clean = _lint_imports(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the probes start from a kept state
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a kernel that reaches up into a step
        ("coaddx/kernels/stats.py", "import coaddx.coadd.assemble", "coaddx layers, one way"),
        # io that asks the planner (I/O does no planning)
        ("coaddx/io/schema.py", "import coaddx.plan", "io does files only"),
        # a cycle between two modules of one package
        ("coaddx/model/masks.py", "import coaddx.model.exposure", "No import cycle"),
        # a step that wires dask itself
        ("coaddx/coadd/config.py", "import dask.array", "dask and distributed only"),
    ],
)
def test_import_contracts_are_live(package_copy, module, line, contract):
    """Each probe breaks one contract in a copy of the package: lint-imports names it."""
    path = package_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # probe\n")
        result = _lint_imports(package_copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout


def test_no_lazy_import_dodges_the_layers():
    """Imports inside functions would hide edges from the contract: the package has none of
    coaddx modules (a lazily imported optional third-party library is fine)."""
    offenders = []
    for path in (ROOT / "coaddx").rglob("*.py"):
        for n, text in enumerate(path.read_text().splitlines(), 1):
            stripped = text.lstrip()
            if text != stripped and stripped.startswith(("from coaddx", "import coaddx")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {stripped}")
    assert not offenders, "\n".join(offenders)


def test_mypy():
    result = _run(sys.executable, "-m", "mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_modules_are_at_most_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "coaddx").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, long


def test_test_module_basenames_are_unique():
    """The test folders have no __init__.py, so pytest imports every test file by its basename:
    two files of one name in different folders stop the whole collection ("import file
    mismatch"; tests/kernels/test_footprint.py beside tests/model/test_footprint.py did)."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, f"test files share a basename: {clashes}"
