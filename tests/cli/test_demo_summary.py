"""The demo's summary: compile time is never reported as throughput; the epoch planes are
summarised and the quick-look shows the mean epoch."""

import numpy as np

import coaddx
from coaddx.cli.demo import epoch_rows, throughput_rows
from coaddx.cli.quicklook import quicklook_png
from coaddx.testing import random_warps


def test_throughput_excludes_the_seconds_spent_compiling():
    # 16 Mpix-visits in a 10 s stage of which 8 s were compiling: 8 Mpix-visits/s, not 1.6
    rows = dict(throughput_rows(16_000_000, 10.0, 2.0))
    assert rows["throughput"].startswith("2 Mpix-visits/s")
    rows = dict(throughput_rows(16_000_000, 10.0, 8.0))
    assert rows["throughput"].startswith("8 Mpix-visits/s")
    assert dict(throughput_rows(16_000_000, 2.0, 0.0))["throughput"].startswith("8 Mpix")


def test_no_throughput_when_the_stage_was_mostly_compiling_or_unmeasured():
    assert "not measured" in dict(throughput_rows(16_000_000, 10.0, 9.5))["throughput"]
    assert "not measured" in dict(throughput_rows(16_000_000, 10.0, 0.0, unseen=True))["throughput"]


def test_summary_and_quicklook_show_the_epoch_planes(tmp_path):
    ds = random_warps(4, (24, 24), seed=1)
    ds["mjd"] = ("visit", [60000.0, 60001.0, 60010.0, 60030.5])
    coadd = coaddx.assemble(ds, coaddx.AssembleConfig(epoch_planes=True)).compute()
    ((label, text),) = epoch_rows(coadd)
    first, last = float(np.nanmin(coadd["first_mjd"])), float(np.nanmax(coadd["last_mjd"]))
    assert label == "epoch planes" and f"MJD {first:.2f}..{last:.2f}" in text
    assert "4 visits contributed" in text
    assert epoch_rows(coaddx.assemble(ds)) == []
    png = quicklook_png(
        tmp_path / "q.png",
        {"coadd": coadd["image"].values},
        maps={"weight-mean epoch (MJD)": coadd["mean_mjd"].values},
    )
    assert png.stat().st_size > 5_000
