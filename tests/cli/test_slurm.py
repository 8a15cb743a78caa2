"""coaddx on a real Slurm: dask workers submitted as batch jobs through dask-jobqueue.

The ``slurm`` fixture runs a one-node Slurm on this machine: it generates a ``slurm.conf`` for
localhost (the node's real CPUs and memory from ``slurmd -C``, no cgroups: proctrack/linuxproc,
task/none, select/cons_tres), starts ``munged`` with a fresh key, ``slurmctld`` and ``slurmd``
in the foreground on free ports with all state in a temporary folder, waits for the node to be
idle, and stops everything afterwards (jobs cancelled first). ``SLURM_CONF`` points sbatch,
squeue and scancel (which dask-jobqueue calls) at it. The tests skip where the Slurm binaries
are absent (``.ci/run`` installs ``slurm-wlm`` and ``munge``) or where they cannot run (not
root).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

import coaddx
from coaddx.cli.main import main

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_line() -> str:
    """``NodeName=... CPUs=... RealMemory=...`` of this machine, as slurmd detects it."""
    out = subprocess.run(
        [_which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def slurm_conf(root: Path, node_line: str, munge_socket: Path, ports: tuple[int, int]) -> str:
    """A slurm.conf for a one-node cluster on localhost with all state under ``root``."""
    fields = dict(item.split("=", 1) for item in node_line.split())
    node = fields["NodeName"]
    hardware = " ".join(
        f"{k}={fields[k]}"
        for k in (
            "CPUs",
            "Boards",
            "SocketsPerBoard",
            "CoresPerSocket",
            "ThreadsPerCore",
            "RealMemory",
        )
        if k in fields
    )
    return "\n".join(
        [
            "ClusterName=coaddxtest",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=10",
            f"NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@dataclass
class Slurm:
    """A running one-node Slurm: its config, a jobqueue YAML for it, and its folder."""

    root: Path
    conf: Path
    jobqueue_config: Path
    cpus: int

    def run(self, *args: str) -> str:
        return subprocess.run(
            [_which(args[0]), *args[1:]], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    def jobs(self) -> list[str]:
        """Ids of the jobs queued or running."""
        return self.run("squeue", "-h", "-o", "%i").split()

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            if path.is_file():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


def _wait(predicate, timeout: float, what: str, slurm: Slurm | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if predicate():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        time.sleep(0.2)
    logs = slurm.logs() if slurm is not None else ""
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def _jobqueue_yaml(root: Path, cpus: int) -> Path:
    """cluster/jobqueue.yaml with the sizes of this one-node test cluster."""
    config = yaml.safe_load((ROOT / "cluster" / "jobqueue.yaml").read_text())
    config["jobqueue"]["slurm"].update(
        {
            "cores": 1,
            "memory": "1GiB",
            "walltime": "00:10:00",
            "queue": "debug",
            "local-directory": str(root / "dask"),
            "log-directory": str(root / "log" / "workers"),
            "death-timeout": 30,
            "scheduler-options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        }
    )
    path = root / "jobqueue.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _start(root: Path) -> tuple[Slurm, list[subprocess.Popen]]:
    for sub in ("state", "spool", "log", "munge", "dask"):
        (root / sub).mkdir(mode=0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "munge.socket"
    line = _node_line()
    conf = root / "slurm.conf"
    ctld_port, slurmd_port = _free_ports(2)
    conf.write_text(slurm_conf(root, line, sock, (ctld_port, slurmd_port)))
    cpus = int(dict(f.split("=", 1) for f in line.split())["CPUs"])
    slurm = Slurm(root, conf, _jobqueue_yaml(root, cpus), cpus)
    procs: list[subprocess.Popen] = []
    log = (root / "log" / "daemons.out").open("w")
    commands = [
        [
            _which("munged"),
            "-F",
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
            f"--log-file={root / 'log' / 'munged.log'}",
        ],
        [_which("slurmctld"), "-D", "-c", "-f", str(conf)],
        [_which("slurmd"), "-D", "-f", str(conf)],
    ]
    try:
        for i, cmd in enumerate(commands):
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            if i == 0:
                _wait(sock.exists, 20, "munged's socket", slurm)
        _wait(
            lambda: slurm.run("sinfo", "-h", "-N", "-o", "%t").strip() == "idle",
            60,
            "the Slurm node to be idle",
            slurm,
        )
    except BaseException:
        _stop(procs)
        raise
    return slurm, procs


@pytest.fixture(scope="module")
def slurm():
    missing = [b for b in DAEMONS + CLIENTS if _which(b) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed (missing {', '.join(missing)}); .ci/run installs "
            "slurm-wlm and munge"
        )
    if os.geteuid() != 0:
        pytest.skip("running slurmd and munged for the test cluster needs root")
    root = Path(tempfile.mkdtemp(prefix="coaddx-slurm-"))  # short: munge's socket path
    root.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(root / "slurm.conf"))
        slurm, procs = _start(root)
        try:
            yield slurm
        finally:
            try:
                if slurm.jobs():
                    slurm.run("scancel", "--full", *slurm.jobs())
                _wait(lambda: not slurm.jobs(), 30, "the jobs to end", slurm)
            finally:
                _stop(procs)
                shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm-sim")
    sim = coaddx.simulate(
        out / "sim", n_visits=8, shape=(256, 320), seed=21, calexps=False, n_stars=60, n_galaxies=20
    )
    return sim.warps


@pytest.fixture(scope="module")
def local_coadd(sim_store, tmp_path_factory):
    """The coadd computed by the CLI on the default LocalCluster."""
    out = tmp_path_factory.mktemp("slurm-local") / "coadd.zarr"
    assert main(["assemble", str(sim_store), str(out), "--no-progress"]) == 0
    return coaddx.open_coadd(out)


def _assert_same(a, b):
    for name in ("image", "variance", "mask", "n_image", "weight"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs["statistic"] == b.attrs["statistic"]


def test_assemble_on_slurm_jobs_equals_local_cluster(
    slurm, sim_store, local_coadd, tmp_path, capsys
):
    from coaddx.runtime.cluster import ClusterConnection, compute_with_progress, connect

    with connect("slurm", jobs=2, config=slurm.jobqueue_config, job_script=True) as conn:
        assert isinstance(conn, ClusterConnection)
        conn.wait_for_workers(2, timeout=90)
        running = slurm.jobs()
        jobs = conn.run(lambda: os.environ.get("SLURM_JOB_ID", ""))
        coadd = coaddx.assemble(coaddx.open_warps(sim_store))
        coaddx.write_coadd(
            coadd,
            tmp_path / "slurm.zarr",
            compute=lambda d: compute_with_progress(conn, d, show=False),
        )
        executed = conn.run(lambda dask_worker: dask_worker.state.executed_count)
    out = capsys.readouterr().out
    assert "#SBATCH --mem=1G" in out and "#SBATCH -p debug" in out
    assert "dask dashboard: http" in out
    # every worker runs inside its own Slurm job and did the work; the jobs end on close
    assert len(jobs) == 2 and sorted(jobs.values()) == sorted(running)
    assert sum(executed.values()) > 10
    _wait(lambda: not slurm.jobs(), 30, "the worker jobs to be cancelled", slurm)
    _assert_same(coaddx.open_coadd(tmp_path / "slurm.zarr"), local_coadd)


def test_cli_assemble_cluster_slurm_with_report(slurm, sim_store, local_coadd, tmp_path, capsys):
    report = tmp_path / "report.html"
    rc = main(
        [
            "assemble",
            str(sim_store),
            str(tmp_path / "c.zarr"),
            "--cluster",
            "slurm",
            "--jobs",
            "1",
            "--jobqueue-config",
            str(slurm.jobqueue_config),
            "--job-script",
            "--report",
            str(report),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "#SBATCH" in out and "peak memory" in out and "planned" in out
    assert re.search(r"spilled to disk\s+0 keys", out)
    assert report.stat().st_size > 10_000 and "<html" in report.read_text()[:2000].lower()
    _assert_same(coaddx.open_coadd(tmp_path / "c.zarr"), local_coadd)
    _wait(lambda: not slurm.jobs(), 30, "the worker job to be cancelled", slurm)
