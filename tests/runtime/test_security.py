"""What the clusters coaddx starts expose: local ones bind to 127.0.0.1 (scheduler, workers,
dashboard) unless asked otherwise; batch-cluster schedulers speak TLS with per-run
credentials, and a client without them is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from pathlib import Path

import dask
import psutil
import pytest
from distributed import Client, LocalCluster, Security
from distributed.comm import connect

import coaddx
from coaddx.cluster import (
    DEFAULT_DASHBOARD_ADDRESS,
    batch_security,
    dashboard_address,
    dashboard_link,
    dashboard_tunnel,
    jobqueue_cluster,
    local,
)

ROOT = Path(__file__).resolve().parents[2]


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    out = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.add((conn.laddr.ip, conn.laddr.port))
    return out


def _tree() -> list[int]:
    me = psutil.Process()
    return [me.pid, *(p.pid for p in me.children(recursive=True))]


def _close(client):
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_cluster_listens_on_localhost_only(processes):
    before = _listening(_tree())
    client = local(1, 1, processes=processes)
    try:
        opened = _listening(_tree()) - before
        cluster = client.cluster
        dash = cluster.scheduler.services["dashboard"]
        workers = client.run(
            lambda dask_worker: (dask_worker.address, dask_worker.http_server.address)
        )
        link, tunnel = dashboard_link(client), dashboard_tunnel(client)
    finally:
        _close(client)
    # every port the cluster opened (scheduler, nanny, worker, worker HTTP, dashboard)
    assert opened and {host for host, _ in opened} == {"127.0.0.1"}, opened
    assert dash.address == "127.0.0.1" and ("127.0.0.1", dash.port) in opened
    for address, http_host in workers.values():
        assert http_host == "127.0.0.1"
        assert address.startswith("inproc://" if not processes else "tcp://127.0.0.1:")
    assert link == f"http://127.0.0.1:{dash.port}/status"
    assert f"ssh -L 8787:127.0.0.1:{dash.port} {socket.gethostname()}" in tunnel
    assert "http://localhost:8787/status" in tunnel


def test_local_cluster_without_dashboard_opens_no_public_port():
    before = _listening(_tree())
    client = local(1, 1, processes=False, dashboard=False)
    try:
        opened = _listening(_tree()) - before
        assert dashboard_link(client) is None and dashboard_tunnel(client) is None
    finally:
        _close(client)
    assert opened and {host for host, _ in opened} == {"127.0.0.1"}, opened


def test_dashboard_address_argument_and_config_keys():
    client = local(1, 1, processes=False, dashboard_address="0.0.0.0:0")
    try:
        assert client.cluster.scheduler.services["dashboard"].address == "0.0.0.0"
        assert dashboard_link(client).startswith(f"http://{socket.gethostname()}:")
    finally:
        _close(client)
    assert dashboard_address() == DEFAULT_DASHBOARD_ADDRESS == "127.0.0.1:8787"
    with dask.config.set({"distributed.dashboard.address": ":9000"}):
        assert dashboard_address() == ":9000"
        with dask.config.set({"coaddx.dashboard-address": "127.0.0.1:0"}):
            assert dashboard_address() == "127.0.0.1:0"  # coaddx's key wins
            client = local(1, 1, processes=False)
            try:
                dash = client.cluster.scheduler.services["dashboard"]
                assert dash.address == "127.0.0.1" and dash.port not in (0, 8787, 9000)
            finally:
                _close(client)
    assert dashboard_address(8900) == "127.0.0.1:8900"  # a bare port: this host only
    for bad in ("localhost:99999", "not an address", "1.2.3.4:", True):
        with pytest.raises(coaddx.ConfigError, match="HOST:PORT"):
            dashboard_address(bad)
    with dask.config.set({"coaddx.dashboard-address": "nope nope"}):
        with pytest.raises(coaddx.ConfigError, match=r"coaddx\.dashboard-address"):
            local(1, 1, processes=False)


@pytest.mark.parametrize("bad", [0, -2])
def test_local_refuses_nonsense_sizes(bad):
    with pytest.raises(coaddx.ConfigError, match="n_workers must be"):
        local(bad, processes=False)
    with pytest.raises(coaddx.ConfigError, match="threads_per_worker must be"):
        local(1, bad, processes=False)


def _identity(address: str, security: Security | None = None) -> dict:
    """Connect to the scheduler at ``address`` as a client with ``security`` and ask it who it
    is (what ``Client(address)`` does first); raises when the connection is refused."""
    kwargs = security.get_connection_args("client") if security is not None else {}

    async def ask() -> dict:
        comm = await connect(address, timeout="3s", **kwargs)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    return asyncio.run(ask())


def _tls_handshake_without_certificate(address: str) -> None:
    """What an attacker without the credentials can do: a TLS client that skips verifying the
    server and offers no certificate of its own."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"\x00" * 64)
            tls.recv(1)  # the server rejects the missing client certificate


def test_tls_scheduler_refuses_clients_without_the_run_credentials():
    security = batch_security()  # what jobqueue_cluster uses unless the config names certs
    assert isinstance(security, Security) and security.require_encryption
    assert "BEGIN PRIVATE KEY" in security.tls_scheduler_key  # made for this run, in memory
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        security=security,
        dashboard_address=None,
    )
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises(TypeError, match="TLS expects a `ssl_context`"):
            _identity(address)  # no credentials at all
        with pytest.raises(OSError):
            _identity(address, Security.temporary())  # someone else's
        with pytest.raises(OSError):
            _identity(address.replace("tls://", "tcp://"))  # plain TCP
        assert _identity(address, security)["type"] == "Scheduler"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _tls_handshake_without_certificate(address)
        with Client(address, timeout="10s", security=security) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            assert client.run_on_scheduler(os.getpid) == os.getpid()
    finally:
        cluster.close()


def test_jobqueue_cluster_speaks_tls_with_private_worker_credentials(tmp_path):
    config = ROOT / "cluster" / "jobqueue.yaml"
    cluster = jobqueue_cluster("slurm", config=config, shared_temp_directory=str(tmp_path))
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        assert cluster.scheduler.services["dashboard"].address == "127.0.0.1"
        script = cluster.job_script()
        assert "tls://" in script
        files = {
            flag: Path(script.split(f"--tls-{flag} ", 1)[1].split()[0])
            for flag in ("ca-file", "cert", "key")
        }
        folder = files["key"].parent
        assert folder.parent == tmp_path and folder.name.startswith(".coaddx-tls-")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for path in files.values():
            assert path.parent == folder and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "PRIVATE KEY" in files["key"].read_text()
        with pytest.raises(TypeError, match="ssl_context"):
            _identity(address)
        with pytest.raises(OSError):
            _identity(address, Security.temporary())
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _tls_handshake_without_certificate(address.replace("0.0.0.0", "127.0.0.1"))
        with Client(cluster, timeout="10s") as client:  # the cluster's own credentials
            assert client.run_on_scheduler(os.getpid) == os.getpid()
    finally:
        cluster.close()
    assert not folder.exists()  # cluster.close() removed the credentials
    assert list(tmp_path.iterdir()) == []


def test_jobqueue_cluster_refuses_plain_tcp():
    with pytest.raises(coaddx.ConfigError, match="speak TLS"):
        jobqueue_cluster("slurm", cores=1, memory="1GiB", protocol="tcp://")


def test_batch_security_from_the_users_certificate_files(tmp_path):
    made = Security.temporary()
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.write_text(made.tls_ca_file)
    cert.write_text(made.tls_scheduler_cert)
    key.write_text(made.tls_scheduler_key)
    spec = {"ca-file": str(ca), "cert": str(cert), "key": str(key)}
    security = batch_security(spec)
    assert security.require_encryption and security.tls_ca_file == str(ca)
    assert security.tls_worker_cert == security.tls_client_cert == str(cert)
    assert security.tls_scheduler_key == str(key)
    own = tmp_path / "worker.pem"
    own.write_text(made.tls_worker_cert)
    assert batch_security({**spec, "worker-cert": str(own)}).tls_worker_cert == str(own)
    # a jobqueue cluster built with them needs no file of its own
    cluster = jobqueue_cluster("pbs", cores=1, memory="1GiB", security=spec)
    try:
        assert cluster.scheduler_address.startswith("tls://")
        assert f"--tls-key {key}" in cluster.job_script()
        assert getattr(cluster, "coaddx_credentials", None) is None
    finally:
        cluster.close()
    with pytest.raises(coaddx.ConfigError, match=r"no certificate file .*missing\.pem"):
        batch_security({**spec, "cert": str(tmp_path / "missing.pem")})
    with pytest.raises(coaddx.ConfigError, match="unknown security entry 'password'"):
        batch_security({**spec, "password": str(key)})
    with pytest.raises(coaddx.ConfigError, match="needs ca-file and cert"):
        batch_security({"ca-file": str(ca)})
