import numpy as np
import pytest

import coaddx
from coaddx.cli.main import main
from coaddx.testing import random_warps as make_warps


@pytest.mark.parametrize("command", ["simulate", "assemble", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: coaddx " + command in capsys.readouterr().out


def test_cli_assemble_writes_the_library_result(tmp_path, capsys):
    ds = make_warps(6, (48, 64), seed=11)
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    rc = main(
        [
            "assemble",
            str(tmp_path / "p.zarr"),
            str(tmp_path / "c.zarr"),
            "--statistic",
            "median",
            "--no-progress",
            "--no-interp",
            "--memory-per-task",
            "64MiB",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "dask dashboard" in out and "Mpix-visits/s" in out and "peak memory" in out
    written = coaddx.open_coadd(tmp_path / "c.zarr")
    expected = coaddx.assemble(
        coaddx.open_warps(tmp_path / "p.zarr"),
        coaddx.AssembleConfig(statistic="median", interp=None),
    ).compute()
    for v in ("image", "variance", "mask", "n_image"):
        np.testing.assert_array_equal(written[v].values, expected[v].values)
    assert written.attrs["statistic"] == "median"
    assert written.attrs["mask_planes"]["CLIPPED"] == 9


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    rc = main(
        ["assemble", str(tmp_path / "missing.zarr"), str(tmp_path / "c.zarr"), "--no-progress"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "no warp store" in err and "Traceback" not in err
    assert not (tmp_path / "c.zarr").exists()


def test_cli_warp_then_assemble(tmp_path, capsys):
    from coaddx.sim.simulate import simulate

    sim = simulate(
        tmp_path / "sim",
        n_visits=3,
        shape=(192, 192),
        seed=4,
        calexps=True,
        n_stars=40,
        n_galaxies=5,
        artifacts=False,
    )
    store = tmp_path / "w.zarr"
    rc = main(
        ["warp", str(store), *map(str, sim.calexps), "--grid-from", str(sim.warps), "--no-progress"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "warped" in out and "3 visits" in out
    ds = coaddx.open_warps(store)
    assert ds.sizes["visit"] == 3 and ds.attrs["wcs"] == coaddx.open_warps(sim.warps).attrs["wcs"]
    rc = main(
        ["warp", str(store), *map(str, sim.calexps), "--no-progress"]
    )  # reuses the store grid
    assert rc == 0 and "3 visits already in the store" in capsys.readouterr().out
    assert main(["assemble", str(store), str(tmp_path / "c.zarr"), "--no-progress"]) == 0
    assert np.isfinite(coaddx.open_coadd(tmp_path / "c.zarr")["image"].values).mean() > 0.9


@pytest.mark.parametrize("command", ["warp", "export-fits"])
def test_new_commands_have_help_with_cluster_options(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--cluster", "--jobs", "--report", "--jobqueue-config", "--job-script"):
        assert flag in out


def test_cli_assemble_report_and_memory_summary(tmp_path, capsys):
    ds = make_warps(8, (96, 128), seed=3)
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    report = tmp_path / "r" / "report.html"
    rc = main(
        [
            "assemble",
            str(tmp_path / "p.zarr"),
            str(tmp_path / "c.zarr"),
            "--no-progress",
            "--memory-per-task",
            "32MiB",
            "--report",
            str(report),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "time: open + plan" in out and "time: stack + write" in out
    assert "planned" in out and "per worker" in out and "spilled to disk" in out
    assert f"performance report: {report}" in out
    assert report.stat().st_size > 10_000 and "bokeh" in report.read_text().lower()


def test_cli_cluster_options_are_checked(tmp_path, capsys):
    ds = make_warps(4, (32, 32), seed=1)
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    args = ["assemble", str(tmp_path / "p.zarr"), str(tmp_path / "c.zarr"), "--no-progress"]
    assert main([*args, "--jobs", "2"]) == 2
    assert "need --cluster slurm" in capsys.readouterr().err
    bad = tmp_path / "jq.yaml"
    bad.write_text("jobqueue:\n  pbs:\n    cores: 1\n")
    assert main([*args, "--cluster", "slurm", "--jobqueue-config", str(bad)]) == 2
    assert "has no 'jobqueue: slurm:' section" in capsys.readouterr().err
    assert main([*args, "--cluster", "pbs", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "c.zarr").exists()


def test_connect_rejects_jobqueue_options_for_an_address():
    from coaddx.runtime.cluster import connect, jobqueue_cluster

    with pytest.raises(coaddx.ConfigError, match="not to a scheduler address"):
        connect("tcp://127.0.0.1:1", jobs=2)
    with pytest.raises(coaddx.ConfigError, match="cluster kind must be one of"):
        jobqueue_cluster("lsf")
    with pytest.raises(coaddx.ConfigError, match="jobs must be >= 1"):
        connect("slurm", jobs=0)


def test_jobqueue_yaml_builds_slurm_and_pbs_job_scripts():
    from pathlib import Path

    from coaddx.runtime.cluster import jobqueue_cluster

    config = Path(__file__).resolve().parents[2] / "cluster" / "jobqueue.yaml"
    scripts = {}
    for kind in ("slurm", "pbs"):
        cluster = jobqueue_cluster(
            kind, config=config, queue="short", scheduler_options={"dashboard_address": ":0"}
        )
        try:
            scripts[kind] = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH --cpus-per-task=8" in scripts["slurm"]
    assert "#SBATCH --mem=32G" in scripts["slurm"] and "#SBATCH -p short" in scripts["slurm"]
    assert "#SBATCH -J coaddx-worker" in scripts["slurm"]
    assert "select=1:ncpus=8:mem=32GB" in scripts["pbs"] and "#PBS -q short" in scripts["pbs"]
    for script in scripts.values():
        assert "--nthreads 8" in script and "--local-directory ${TMPDIR:-/tmp}" in script


def test_simulate_shows_a_progress_bar(tmp_path, capsys):
    assert (
        main(["simulate", str(tmp_path / "s"), "--visits", "2", "--size", "64", "--no-calexps"])
        == 0
    )
    err = capsys.readouterr().err
    assert "simulate [" in err and "2/2 visits" in err


def test_compute_with_progress_without_a_client_uses_the_local_progress_bar(capsys):
    import dask.array as da

    from coaddx.runtime.cluster import compute_with_progress

    x = da.arange(1000, chunks=100)
    assert compute_with_progress(None, x.sum()) == 499500
    assert compute_with_progress(None, [x.max(), x.min()]) == [999, 0]
    out = capsys.readouterr().out
    assert "100% Completed" in out
    assert compute_with_progress(None, x.sum(), show=False) == 499500
    assert "Completed" not in capsys.readouterr().out


def test_cluster_connection_closes_client_then_cluster():
    from coaddx.runtime.cluster import ClusterConnection

    closed = []

    class Part:
        def __init__(self, name):
            self.name = name
            self.dashboard_link = "http://x:8787/status"

        def close(self):
            closed.append(self.name)

    with ClusterConnection(Part("client"), Part("cluster")) as conn:
        assert conn.name == "client"  # attributes fall through to the client
        assert conn.dashboard_link == "http://x:8787/status"
    assert closed == ["client", "cluster"]


def test_process_workers_get_the_malloc_tuning():
    """Worker processes do not inherit the client's mallopt: the plugin applies it in each."""
    from coaddx.runtime.cluster import local

    client = local(n_workers=2, processes=True, dashboard=False)
    try:
        tuned = client.run(lambda dask_worker: getattr(dask_worker, "coaddx_malloc_tuned", None))
    finally:
        client.close()
        client.cluster.close()
    assert len(tuned) == 2 and all(v is True for v in tuned.values())


def test_diff_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["diff", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: coaddx diff" in out and "--convolve-science" in out


def test_config_flags_take_their_defaults_from_the_config():
    import argparse

    from coaddx.cli.options import add_config_flags
    from coaddx.warp.config import WarpConfig

    p = argparse.ArgumentParser()
    flags = add_config_flags(
        p, coaddx.AssembleConfig, ["statistic", "bad_mask_planes", "interp", "subregion_size"]
    )
    assert flags.build(p.parse_args([])) == coaddx.AssembleConfig()
    got = flags.build(
        p.parse_args(
            ["--bad-mask-planes", "NO_DATA,BAD,SAT", "--no-interp", "--subregion-size", "48"]
        )
    )
    assert got.bad_mask_planes == ("NO_DATA", "BAD", "SAT") and got.interp is None
    assert got.subregion_size == (48, 48)
    assert "{mean,meanclip,median}" in p.format_help() and "NO_DATA,BAD,SAT,EDGE" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--statistic", "mode"])
    q = argparse.ArgumentParser()
    warp = add_config_flags(q, WarpConfig, ["kernel", "calibrate"], choices={"kernel": ("a", "b")})
    assert warp.values(q.parse_args(["--no-calibrate", "--kernel", "b"])) == {
        "calibrate": False,
        "kernel": "b",
    }
    base = WarpConfig(border=7)
    assert warp.build(q.parse_args([]), base) == base  # only given flags change a preset


def test_cli_assemble_writes_the_epoch_planes_on_request(tmp_path):
    sim = coaddx.simulate(
        tmp_path / "sim", n_visits=3, shape=(64, 64), seed=2, calexps=False, n_stars=5
    )
    assert main(["assemble", str(sim.warps), str(tmp_path / "off.zarr"), "--no-progress"]) == 0
    assert "mean_mjd" not in coaddx.open_coadd(tmp_path / "off.zarr")
    out = tmp_path / "on.zarr"
    assert main(["assemble", str(sim.warps), str(out), "--epoch-planes", "--no-progress"]) == 0
    coadd = coaddx.open_coadd(out)
    mjd = coaddx.open_warps(sim.warps)["mjd"].values
    assert np.nanmin(coadd["first_mjd"].values) == mjd.min()
    assert np.nanmax(coadd["last_mjd"].values) == mjd.max()
    assert coadd["contributed"].values.all()
