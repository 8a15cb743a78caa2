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


def test_cli_warp_then_assemble(tmp_path, capsys):
    from coaddx.simulate import simulate

    sim = simulate(tmp_path / "sim", n_visits=3, shape=(192, 192), seed=4, calexps=True,
                   n_stars=40, n_galaxies=5, artifacts=False)
    store = tmp_path / "w.zarr"
    rc = main(["warp", str(store), *map(str, sim.calexps), "--grid-from", str(sim.warps),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "warped" in out and "3 visits" in out
    ds = coaddx.open_warps(store)
    assert ds.sizes["visit"] == 3 and ds.attrs["wcs"] == coaddx.open_warps(sim.warps).attrs["wcs"]
    rc = main(["warp", str(store), *map(str, sim.calexps), "--no-progress"])  # reuses the store grid
    assert rc == 0 and "3 visits already in the store" in capsys.readouterr().out
    assert main(["assemble", str(store), str(tmp_path / "c.zarr"), "--no-progress"]) == 0
    assert np.isfinite(coaddx.open_coadd(tmp_path / "c.zarr")["image"].values).mean() > 0.9
