"""``coaddx assemble --method dcr``: the CLI writes the library's DCR coadd, reports the
iterations, and names a missing option."""

from __future__ import annotations

import numpy as np
import pytest

import coaddx
from coaddx.cli.main import main

BAND = ["--effective-wavelength", "476.31", "--bandwidth", "147"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    sim = coaddx.simulate(
        tmp_path_factory.mktemp("dcr") / "sim",
        n_visits=4,
        shape=(96, 96),
        dcr=True,
        effective_wavelength=476.31,
        bandwidth=147.0,
        artifacts=False,
        calexps=False,
        seed=3,
    )
    return sim.warps


def test_cli_dcr_writes_the_library_result(store, tmp_path, capsys):
    out = tmp_path / "dcr.zarr"
    rc = main(["assemble", str(store), str(out), "--method", "dcr", *BAND])
    assert rc == 0
    captured = capsys.readouterr()
    assert "iteration 1: metric" in captured.err and "initial model" in captured.err
    assert "updates (" in captured.out and "Mpix-visits/s" in captured.out
    written = coaddx.open_coadd(out)
    assert written["image"].dims == ("subfilter", "y", "x") and written.sizes["subfilter"] == 3
    np.testing.assert_allclose(
        written["coadd"], written["image"].sum("subfilter"), rtol=1e-5, atol=1e-2
    )
    direct = coaddx.open_warps(store)
    config = coaddx.DcrConfig(effective_wavelength=476.31, bandwidth=147.0)
    want = coaddx.assemble_dcr(direct, coaddx.assemble(direct), config)
    np.testing.assert_allclose(written["image"], want["image"], rtol=1e-5, atol=1e-3)
    assert written.attrs["convergence"] == pytest.approx(want.attrs["convergence"])


def test_cli_dcr_takes_a_template_store(store, tmp_path):
    template = coaddx.assemble(coaddx.open_warps(store), coaddx.AssembleConfig(statistic="mean"))
    coaddx.write_coadd(template, tmp_path / "t.zarr")
    out = tmp_path / "dcr.zarr"
    rc = main(
        [
            "assemble",
            str(store),
            str(out),
            "--method",
            "dcr",
            *BAND,
            "--template",
            str(tmp_path / "t.zarr"),
            "--subfilters",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    written = coaddx.open_coadd(out)
    assert written.sizes["subfilter"] == 2
    np.testing.assert_allclose(written["template"], template["image"], rtol=1e-6)


def test_cli_dcr_names_a_missing_option(store, tmp_path, capsys):
    rc = main(
        [
            "assemble",
            str(store),
            str(tmp_path / "x.zarr"),
            "--method",
            "dcr",
            "--effective-wavelength",
            "476.31",
        ]
    )
    assert rc == 2
    assert "--bandwidth" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
