"""Execute the notebooks in notebooks/ (nbclient) on their small data, in a temporary folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAX_SECONDS = 60  # each runs in well under 30 s on the project machine; headroom for noise


def _execute(name: str, workdir: Path) -> tuple[object, float]:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    t0 = time.perf_counter()
    client.execute()
    return book, time.perf_counter() - t0


def _outputs(book) -> str:
    return "\n".join(
        o.get("text", "")
        for c in book.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book, seconds = _execute("quickstart.ipynb", tmp_path)
    print(f"quickstart.ipynb: {seconds:.1f} s")
    text = _outputs(book)
    assert "warped 8 visits" in text and "statistic: meanclip" in text
    assert "inputs (visit, detector) of 8 visits" in text  # the inputs table
    assert "px; PSF sum 1.0000" in text  # the CoaddPsf FWHM map and the PSF at the centre
    assert (tmp_path / "quickstart-out" / "coadd.zarr").is_dir()
    assert (tmp_path / "quickstart-out" / "coadd.fits").stat().st_size > 3 * 256 * 256 * 4
    for png in (
        "coadd.png",
        "planes.png",
        "epochs.png",
        "coadd_psf.png",
    ):  # the figures, also saved under the Agg backend
        assert (tmp_path / "quickstart-out" / png).stat().st_size > 20_000
    assert seconds < MAX_SECONDS


def test_scaling_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book, seconds = _execute("scaling.ipynb", tmp_path)
    print(f"scaling.ipynb: {seconds:.1f} s")
    text = _outputs(book)
    assert "dashboard: http" in text and "spilled 0 keys" in text
    reports = sorted((tmp_path / "scaling-out").glob("report-*.html"))
    assert len(reports) == 2 and all(r.stat().st_size > 10_000 for r in reports)
    assert (tmp_path / "scaling-out" / "throughput.png").is_file()
    assert seconds < MAX_SECONDS


def test_compare_warp_notebook_runs(tmp_path, monkeypatch):
    import coaddx

    monkeypatch.setenv("MPLBACKEND", "Agg")
    book, seconds = _execute("compare_warp.ipynb", tmp_path)
    print(f"compare_warp.ipynb: {seconds:.1f} s")
    text = _outputs(book)
    assert "epoch_count histogram" in text and "CLIPPED px" in text
    out = tmp_path / "compare-warp-out"
    coadd = coaddx.open_coadd(out / "coadd.zarr")
    assert coadd["artifact_mask"].dims == ("visit", "y", "x")
    assert coadd["epoch_count"].values.max() >= 1
    for png in (
        "template_difference.png",
        "epoch_count.png",
        "clipped_by_visit.png",
        "coadd_vs_mean.png",
    ):
        assert (out / png).stat().st_size > 10_000
    assert seconds < MAX_SECONDS


def test_dcr_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book, seconds = _execute("dcr.ipynb", tmp_path)
    print(f"dcr.ipynb: {seconds:.1f} s")
    text = _outputs(book)
    assert "updates (" in text and "blue star (slope -" in text and "red star (slope +" in text
    ratio = float(text.split("(DCR template), ratio ")[1].split()[0])
    assert ratio < 1.0  # the DCR template leaves less over the stars than the plain coadd
    for png in ("subfilters.png", "residuals.png"):
        assert (tmp_path / "dcr-out" / png).stat().st_size > 20_000
    assert seconds < MAX_SECONDS
