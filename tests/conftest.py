"""Shared fixtures: small in-memory warp stacks and paths to the real data (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from coaddx.testing import random_warps

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture
def tiny_warps() -> xr.Dataset:
    return random_warps()


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is not present")
    return REAL_DATA
