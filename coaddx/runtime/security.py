"""What a cluster exposes, and to whom: dashboard addresses and TLS credentials.

Local clusters bind their scheduler, workers and dashboard to 127.0.0.1; the address of a
dashboard comes from :func:`dashboard_address` (an argument, the dask config
``coaddx.dashboard-address`` or ``distributed.dashboard.address``, else 127.0.0.1:8787), and
:func:`dashboard_tunnel` says how to reach it through SSH. The scheduler of a batch cluster must
be reachable from the compute nodes, so it speaks TLS with the credentials of
:func:`batch_security` (per-run ones unless the user's config names certificates): a client
without them is refused in the TLS handshake. ``cluster/README.md`` ("What is exposed").
"""

from __future__ import annotations

import copy
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask

from coaddx.errors import ConfigError

__all__ = [
    "DEFAULT_DASHBOARD_ADDRESS",
    "batch_security",
    "dashboard_address",
    "dashboard_link",
    "dashboard_tunnel",
    "write_worker_credentials",
]

#: Where dashboards listen unless ``coaddx.dashboard-address`` (or dask's
#: ``distributed.dashboard.address``) or an argument says otherwise: this host only.
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"

_ADDRESS = re.compile(r"^(?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]*):)?(\d{1,5})$")


def dashboard_address(value: str | int | None = None) -> str:
    """The address a dashboard listens on: ``value`` if given, else the dask config
    ``coaddx.dashboard-address``, else ``distributed.dashboard.address``, else
    :data:`DEFAULT_DASHBOARD_ADDRESS` (127.0.0.1, reached from elsewhere through an SSH tunnel).

    ``"HOST:PORT"``, ``":PORT"`` (every interface) or ``PORT`` (this host only); port 0 picks a
    free one. Anything else raises :class:`~coaddx.errors.ConfigError`.
    """
    source = "dashboard address"
    if value is None:
        for key in ("coaddx.dashboard-address", "distributed.dashboard.address"):
            value = dask.config.get(key, None)
            if value is not None:
                source = key
                break
        else:
            return DEFAULT_DASHBOARD_ADDRESS
    text = str(value).strip()
    match = _ADDRESS.match(text)
    if match is None or int(match.group(2)) > 65535 or isinstance(value, bool):
        raise ConfigError(
            f"{source} must be HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:8787), got {value!r}"
        )
    if match.group(1) is None:  # a bare port: this host only
        return f"127.0.0.1:{match.group(2)}"
    return text


def _dashboard_server(client: Any) -> tuple[str, int] | None:
    """(bound host, port) of the bokeh dashboard of a scheduler running in this process
    (``None`` when it serves only /health and /metrics, or runs elsewhere)."""
    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    services = getattr(scheduler, "services", None)
    app = getattr(scheduler, "http_application", None)
    if not isinstance(services, Mapping) or not getattr(app, "applications", None):
        return None
    server = services.get("dashboard")
    host, port = getattr(server, "address", None), getattr(server, "port", None)
    if not isinstance(port, int):
        return None
    return str(host or "0.0.0.0"), port


def dashboard_link(client: Any) -> str | None:
    """The dashboard's URL as it is bound (``None`` without one, or for a scheduler this
    process did not start); an address bound to every interface is named by this host."""
    bound = _dashboard_server(client)
    if bound is None:
        return None
    host, port = bound
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def dashboard_tunnel(client: Any) -> str | None:
    """One line saying how to reach the dashboard of ``client``'s scheduler from another
    machine through an SSH tunnel (``None`` when no dashboard runs in this process)."""
    bound = _dashboard_server(client)
    if bound is None:
        return None
    host, port = bound
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::", "127.0.0.1", "localhost") else host
    return (
        f"dashboard tunnel: ssh -L 8787:{target}:{port} {socket.gethostname()} "
        f"(add -J <login-node> for a compute node), then open http://localhost:8787/status"
    )


#: ``security:`` keys of a jobqueue config section -> the ``distributed.Security`` fields
#: they set; ``cert`` and ``key`` serve every role (scheduler, worker jobs, this client).
_TLS_FILES = {
    "ca-file": ("tls_ca_file",),
    "cert": ("tls_scheduler_cert", "tls_worker_cert", "tls_client_cert"),
    "key": ("tls_scheduler_key", "tls_worker_key", "tls_client_key"),
    **{
        f"{role}-{part}": (f"tls_{role}_{part}",)
        for role in ("scheduler", "worker", "client")
        for part in ("cert", "key")
    },
}


def batch_security(spec: Any = None) -> Any:
    """The TLS credentials (a ``distributed.Security``) of a batch cluster's scheduler, its
    worker jobs and the client, so that nobody else who can reach the scheduler's port
    connects (a client without them is refused in the TLS handshake).

    ``spec`` is a ``Security`` (used as it is), a mapping of certificate files (the
    ``security:`` entry of a ``jobqueue.<kind>`` config section: ``ca-file`` plus ``cert`` /
    ``key`` for every role, or ``scheduler-cert``, ``worker-key``, ...), or ``None``: then the
    certificates of the user's dask config (``distributed.comm.tls.ca-file`` and the rest) if
    it names a CA, else ``Security.temporary()``: a key and self-signed certificate made for
    this run only, held in memory.
    """
    from distributed import Security

    if isinstance(spec, Security):
        return spec
    if spec is None:
        if dask.config.get("distributed.comm.tls.ca-file", None):
            return Security(require_encryption=True)
        return Security.temporary()
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"security must map certificate files (ca-file, cert, key, ...), got {spec!r}"
        )
    fields: dict[str, str] = {}
    for key, value in spec.items():
        name = str(key).replace("_", "-")
        if name not in _TLS_FILES:
            raise ConfigError(
                f"unknown security entry {key!r}: expected some of {sorted(_TLS_FILES)}"
            )
        path = Path(os.path.expandvars(str(value))).expanduser()
        if not path.is_file():
            raise ConfigError(f"security {key}: no certificate file {path}")
        for field in _TLS_FILES[name]:
            if len(_TLS_FILES[name]) == 1:  # a role's own file wins over the shared one
                fields[field] = str(path)
            else:
                fields.setdefault(field, str(path))
    missing = [
        f for f in ("tls_ca_file", "tls_scheduler_cert", "tls_worker_cert") if f not in fields
    ]
    if missing:
        raise ConfigError(f"security needs ca-file and cert (or per-role certs); missing {missing}")
    return Security(require_encryption=True, **fields)


def write_worker_credentials(
    security: Any, directory: str | os.PathLike[str]
) -> tuple[Any, Path | None]:
    """``(security with the worker role's credentials as files, the folder holding them)``:
    the in-memory CA, certificate and key of the worker role (per-run ones) are written to a
    new private folder (mode 0700, files 0600) under ``directory``, for the job scripts to
    name; the caller removes the folder when the cluster closes (as
    :func:`coaddx.runtime.cluster.jobqueue_cluster` does). Credentials that are files already
    are left as they are (folder ``None``)."""
    tls = security.get_tls_config_for_role("worker")
    inline = {k: v for k, v in tls.items() if isinstance(v, str) and "\n" in v}
    if not inline:
        return security, None
    folder = Path(tempfile.mkdtemp(prefix=".coaddx-tls-", dir=os.path.expanduser(directory)))
    out = copy.copy(security)
    for key, text in inline.items():
        path = folder / f"worker.{key.replace('_', '-')}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        setattr(out, "tls_ca_file" if key == "ca_file" else f"tls_worker_{key}", str(path))
    return out, folder
