"""The command line on user errors: one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import pytest

import coaddx
import coaddx.testing
from coaddx.cli.main import main


@pytest.fixture
def calexp(tmp_path):
    sim = coaddx.simulate(tmp_path / "sim", n_visits=1, shape=(64, 64), artifacts=False)
    return sim.calexps[0]


@pytest.mark.parametrize("content", [b"garbage", b"SIMPLE  = T" + b" " * 69])
def test_warp_grid_from_a_file_that_is_not_a_header(tmp_path, calexp, capsys, content):
    bad = tmp_path / "grid.fits"
    bad.write_bytes(content)
    args = ["warp", str(tmp_path / "w.zarr"), str(calexp), "--grid-from", str(bad)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "grid.fits" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.zarr").exists()


def test_report_to_an_unwritable_path_is_refused_before_the_run(tmp_path, capsys):
    store = tmp_path / "w.zarr"
    coaddx.write_warps(coaddx.testing.random_warps(n_visits=2, shape=(32, 32)), store)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = tmp_path / "c.zarr"
    args = ["assemble", str(store), str(out), "--report", str(blocker / "r.html")]
    assert main([*args, "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "--report" in err and "Traceback" not in err
    assert not out.exists()
