"""``coaddx check``: verify a warp store (metadata, chunk files, with ``--deep`` every chunk's
CRC) and list what is damaged. Exit status 0: whole, 1: damaged or incomplete, 2: not a
warp store (a user error, one line)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coaddx.errors import StoreError
from coaddx.io.zarr.layout import WARP_TYPES
from coaddx.io.zarr.warp_store import check_store

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check",
        help="verify a warp store and list what is damaged",
        description="Check a warp store's metadata against its commit log and chunk "
        "manifests and every chunk file of every committed visit; --deep also reads every "
        "chunk and checks its CRC-32C. Exit 0: whole, 1: damaged or incomplete. Damaged "
        "visits are rewritten by 'coaddx warp' (make_warps with reuse) given their exposures.",
    )
    p.add_argument("store", type=Path, help="warp store (patch .zarr)")
    p.add_argument("--deep", action="store_true", help="read every chunk and check its CRC")
    p.add_argument(
        "--warp-type",
        choices=WARP_TYPES,
        action="append",
        help="the warp type(s) to check (default: every one the store has)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    store: Path = args.store
    if not (store / "zarr.json").is_file():
        raise StoreError(f"no warp store at {store}")
    types = args.warp_type or [t for t in WARP_TYPES if (store / t).is_dir()]
    if not types:
        raise StoreError(f"{store} holds no warp group ({', '.join(WARP_TYPES)})")
    ok = True
    for warp_type in types:
        report = check_store(store, warp_type, deep=args.deep)
        print("\n".join(report.lines()))
        ok = ok and report.ok
    return 0 if ok else 1
