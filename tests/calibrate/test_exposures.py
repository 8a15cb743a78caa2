"""calibrate_exposures and ``coaddx calibrate``: one task per exposure, outputs written whole,
reuse, failures per exposure, the reference catalogue held once in the graph."""

from __future__ import annotations

import pickle
import shutil

import dask
import numpy as np
import pytest

import coaddx
from coaddx.cli.main import main
from coaddx.io.catalog import read_reference_catalog

KW = {
    "n_visits": 3,
    "shape": (512, 512),
    "seed": 11,
    "artifacts": False,
    "n_stars": 500,
    "n_galaxies": 60,
    "wcs_error": 2.0,
    "zero_point_error": 0.1,
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return coaddx.simulate(tmp_path_factory.mktemp("calsim") / "sim", **KW)


def test_every_exposure_written_whole_then_reused(sim, tmp_path):
    out = tmp_path / "cal"
    graphs = []

    def compute(*tasks):
        graph = {}
        for task in tasks:
            graph.update(dict(task.__dask_graph__()))
        graphs.append(graph)
        return dask.compute(*tasks, scheduler="sync")

    result = coaddx.calibrate_exposures(sim.calexps, sim.refcat, out, compute=compute)
    assert not result.failed and len(result.written) == len(sim.calexps)
    names = sorted(p.name for p in out.iterdir())
    stems = sorted(p.stem for p in sim.calexps)
    assert names == sorted([f"{s}.fits" for s in stems] + [f"{s}.sources.fits" for s in stems])
    truth = {int(r["visit"]): float(r["photo_calib"]) for r in sim.visits}
    for summary, path in zip(result.summaries, result.written, strict=True):
        exp = coaddx.read_exposure(path)
        # 10-15 photometric stars on 533 x 267 px: ~10 mmag scatter (the precision is
        # test_calibrate's); the headers were off by 0.1 mag rms
        dzp = 2.5 * np.log10(exp.photo_calib / truth[exp.visit])
        assert abs(dzp) < 0.02, (dzp, summary)
        assert summary["n_astrometry"] >= 10 and summary["astrometry_rms_arcsec"] < 0.05
        assert set(summary["timings"]) >= {"read", "write"}
    # The catalogue is one node of the graph, not a copy in every task.
    holders = [k for k, v in graphs[0].items() if b"ReferenceCatalog" in pickle.dumps(v)]
    assert len(holders) == 1 and len(graphs[0]) == len(sim.calexps) + 1
    ref = read_reference_catalog(sim.refcat)
    assert len(pickle.dumps(graphs[0][holders[0]])) < 1.2 * len(pickle.dumps(ref))
    # A second run reuses everything and computes nothing.
    again = coaddx.calibrate_exposures(sim.calexps, sim.refcat, out)
    assert again.written == () and sorted(again.reused) == sorted(result.written)
    with pytest.raises(coaddx.InputError, match="already calibrated"):
        coaddx.calibrate_exposures(sim.calexps, sim.refcat, out, reuse=False)


def test_a_failing_exposure_spares_the_others(sim, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = [shutil.copy(p, inputs / p.name) for p in sim.calexps[:2]]
    broken = inputs / "calexp_broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    out = tmp_path / "cal"
    result = coaddx.calibrate_exposures([*paths, broken], sim.refcat, out)
    assert len(result.written) == 2
    assert list(result.failed) == [str(broken)]
    assert "calexp_broken" in result.failed[str(broken)] or "FITS" in result.failed[str(broken)]
    assert not any("broken" in p.name for p in out.iterdir())
    # A catalogue that misses the field fails every exposure by name, writes nothing.
    far = coaddx.ReferenceCatalog(
        np.array([10.0, 10.1, 10.2]), np.array([-80.0, -80.0, -80.1]), np.full(3, 18.0)
    )
    nowhere = coaddx.calibrate_exposures(paths, far, tmp_path / "far")
    assert nowhere.written == () and len(nowhere.failed) == 2
    assert all("none of the" in msg for msg in nowhere.failed.values())
    assert not any((tmp_path / "far").glob("*.fits"))


def test_the_command_line(sim, tmp_path):
    out = tmp_path / "cli"
    args = ["calibrate", str(out), *map(str, sim.calexps), "--refcat", str(sim.refcat)]
    assert main([*args, "--no-progress", "--workers", "1"]) == 0
    assert len(list(out.glob("*.sources.fits"))) == len(sim.calexps)
    # wrong column: a clear error and exit status 2, nothing written
    bad = ["calibrate", str(tmp_path / "bad"), str(sim.calexps[0]), "--refcat", str(sim.refcat)]
    assert main([*bad, "--mag-col", "nope", "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()
