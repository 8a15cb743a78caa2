import numpy as np
import pytest

import coaddx
from coaddx.cli import main
from tests.conftest import make_warps


@pytest.mark.parametrize("command", ["simulate", "assemble", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: coaddx " + command in capsys.readouterr().out


def test_cli_assemble_writes_the_library_result(tmp_path, capsys):
    ds = make_warps(6, (48, 64), seed=11)
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    rc = main(["assemble", str(tmp_path / "p.zarr"), str(tmp_path / "c.zarr"), "--statistic",
               "median", "--no-progress", "--no-interp", "--memory-per-task", "64MiB"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dask dashboard" in out and "Mpix-visits/s" in out and "peak memory" in out
    written = coaddx.open_coadd(tmp_path / "c.zarr")
    expected = coaddx.assemble(coaddx.open_warps(tmp_path / "p.zarr"),
                               coaddx.AssembleConfig(statistic="median", interp=None)).compute()
    for v in ("image", "variance", "mask", "n_image"):
        np.testing.assert_array_equal(written[v].values, expected[v].values)
    assert written.attrs["statistic"] == "median"
    assert written.attrs["mask_planes"]["CLIPPED"] == 9


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    rc = main(["assemble", str(tmp_path / "missing.zarr"), str(tmp_path / "c.zarr"),
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no warp store" in err and "Traceback" not in err
    assert not (tmp_path / "c.zarr").exists()
