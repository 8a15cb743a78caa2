"""The CLI refuses nonsense execution flags with one line, says how to reach its dashboard, and
stops within seconds on Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM:
one line on stderr, exit status 130 / 143, no temporary store left beside the output."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import coaddx
from coaddx.cli.main import main
from coaddx.testing import random_warps


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("interrupts") / "warps.zarr"
    coaddx.write_warps(random_warps(4, (128, 128), seed=3), path)
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--workers", "-2"], "--workers must be >= 1, got -2"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--processes", "--threads", "-1"], "--threads must be >= 1, got -1"),
        (["--cluster", "slurm", "--jobs", "0"], "--jobs must be >= 1, got 0"),
        (["--dashboard-address", "everywhere"], "HOST:PORT"),
        (["--dashboard-address", "127.0.0.1:70000"], "HOST:PORT"),
    ],
)
def test_nonsense_runtime_flags_are_refused_with_one_line(store, tmp_path, capsys, flags, message):
    before = _digest(store)
    out = tmp_path / "c.zarr"
    t0 = time.monotonic()
    assert main(["assemble", str(store), str(out), "--no-progress", *flags]) == 2
    assert time.monotonic() - t0 < 10  # refused, not hung
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coaddx assemble: error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err
    assert "dask dashboard" not in captured.out  # refused before any cluster started
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert _digest(store) == before


def test_cli_prints_how_to_tunnel_to_its_dashboard(store, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    args = ["assemble", str(store), str(out), "--no-progress", "--threads", "1"]
    assert main([*args, "--dashboard-address", "127.0.0.1:0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    link = next(line for line in lines if line.startswith("dask dashboard: "))
    tunnel = [line for line in lines if "ssh -L" in line]
    assert link.startswith("dask dashboard: http://127.0.0.1:")
    port = link.rsplit(":", 1)[1].split("/")[0]
    assert len(tunnel) == 1
    assert f"ssh -L 8787:127.0.0.1:{port} " in tunnel[0]
    assert "http://localhost:8787/status" in tunnel[0]


# Every stacking task sleeps (in the driver and in every worker process: the hook is imported
# at interpreter start through PYTHONPATH), so the run is still writing when the signal comes.
_SLOW_TASKS = textwrap.dedent(
    """
    import importlib.abc, importlib.util, os, sys, time

    class _Slow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "coaddx.graph.stack":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                block = module.single_block

                def slow(blocks):
                    time.sleep(float(os.environ["COADDX_TEST_TASK_DELAY"]))
                    return block(blocks)

                module.single_block = slow

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Slow())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "sig", "group"),
    [
        ("threads", signal.SIGINT, True),
        ("processes", signal.SIGINT, True),
        ("processes", signal.SIGTERM, False),
        ("threads", signal.SIGTERM, False),
    ],
    ids=["threads-ctrl-c", "processes-ctrl-c", "processes-sigterm", "threads-sigterm"],
)
def test_signal_stops_the_cli_quickly_and_cleanly(store, tmp_path, mode, sig, group):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_TASKS)
    out = tmp_path / "c.zarr"
    workers = ["--processes", "--workers", "2"] if mode == "processes" else ["--threads", "2"]
    entry = "import sys; from coaddx.cli import main; sys.exit(main())"  # the console script
    cmd = [sys.executable, "-c", entry, "assemble", str(store), str(out),
           "--subregion-size", "32", "--no-progress", "--dashboard-address", "127.0.0.1:0",
           *workers]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(hook), COADDX_TEST_TASK_DELAY="0.5")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 240
        while not glob.glob(str(tmp_path / ".c.zarr.tmp-*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.05)
        time.sleep(1.0)  # tasks are running (each takes >= 2 s)
        assert proc.poll() is None
        sent = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the driver and its workers
        else:
            proc.send_signal(sig)  # kill PID / a batch system's SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, (stdout, stderr)
    assert stderr.strip().splitlines() == [f"coaddx assemble: interrupted by {name}; stopped"]
    assert took < 10, took
    assert not out.exists()
    assert glob.glob(str(tmp_path / ".c.zarr*")) == []
