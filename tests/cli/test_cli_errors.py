"""The command line on user errors: one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import pytest

import coaddx
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
