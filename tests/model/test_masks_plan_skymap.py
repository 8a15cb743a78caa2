import pickle

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

import coaddx
from coaddx.model.geometry import source_coordinates
from coaddx.model.masks import (
    bitmask,
    check_mask_planes,
    mask_planes_from_header,
    mask_planes_to_header,
    merge_mask_planes,
)
from coaddx.model.skymap import Box, Tract, make_tan_wcs, wcs_from_header_string
from coaddx.plan import plan_stack, task_bytes


def test_mask_planes_are_lsst_bits_and_looked_up_by_name():
    mp = coaddx.mask_planes()
    assert [
        mp[k]
        for k in (
            "BAD",
            "SAT",
            "INTRP",
            "CR",
            "EDGE",
            "DETECTED",
            "DETECTED_NEGATIVE",
            "SUSPECT",
            "NO_DATA",
        )
    ] == list(range(9))
    assert [
        mp[k]
        for k in ("CLIPPED", "SENSOR_EDGE", "INEXACT_PSF", "REJECTED", "BRIGHT_OBJECT", "STREAK")
    ] == list(range(9, 15))
    assert bitmask(mp, ["NO_DATA", "BAD"]) == (1 << 8) | 1
    with pytest.raises(coaddx.MaskPlaneError, match="FOO"):
        bitmask(mp, ["FOO"])
    assert bitmask(mp, ["FOO", "SAT"], strict=False) == 2
    mp["NOT_A_DICT"] = 3
    with pytest.raises(coaddx.MaskPlaneError, match="share bit 3"):
        check_mask_planes(mp)
    assert (
        mask_planes_from_header(mask_planes_to_header(coaddx.mask_planes())) == coaddx.mask_planes()
    )


def test_merge_mask_planes_keeps_existing_bits_and_fills_free_ones():
    base = {"BAD": 0, "CLIPPED": 1}  # CLIPPED's default bit 9 is free, SAT's default 1 is taken
    merged = merge_mask_planes(base, ["SAT", "CLIPPED", "NO_DATA"])
    assert merged["BAD"] == 0 and merged["CLIPPED"] == 1 and merged["NO_DATA"] == 8
    assert merged["SAT"] not in (0, 1, 8)


def test_plan_fits_budget_and_aligns_to_storage_chunk():
    plan = plan_stack(64, (2048, 2048), budget_bytes=512 * 2**20, storage_chunk=512)
    sy, sx = plan.subregion
    assert (plan.task_bytes <= 512 * 2**20 and sy % 512 == 0) or 512 % sy == 0
    assert task_bytes(64, sy, sx) == plan.task_bytes
    small = plan_stack(64, (2048, 2048), budget_bytes=32 * 2**20, storage_chunk=512)
    assert small.task_bytes <= 32 * 2**20 and 512 % small.subregion[0] == 0
    with pytest.raises(coaddx.ConfigError, match="too small"):
        plan_stack(5000, (2048, 2048), budget_bytes=2**20)


def test_tract_patches_tile_the_tract_and_wcs_agrees():
    t = Tract(SkyCoord(150.0, 2.0, unit="deg"), radius=0.2, patch_inner_dimensions=(1000, 1000))
    nx, ny = t.num_patches
    assert t.bbox == Box(0, 0, nx * 1000, ny * 1000)
    p = t.patch(1, 2)
    assert p.inner_bbox == Box(1000, 2000, 2000, 3000)
    assert p.outer_bbox == Box(900, 1900, 2100, 3100)
    corner = t.patch(0, 0)
    assert corner.outer_bbox == Box(0, 0, 1100, 1100)  # clipped to the tract
    sky = p.wcs.pixel_to_world(10.0, 20.0)
    x, y = t.wcs.world_to_pixel(sky)
    assert abs(x - 910) < 1e-6 and abs(y - 1920) < 1e-6
    # the tract centre is near the middle of the tract box, pixel scale 0.2"
    cx, cy = t.wcs.world_to_pixel(t.center)
    assert abs(cx - t.bbox.width / 2) < 2 and abs(cy - t.bbox.height / 2) < 2
    scale = np.sqrt(abs(np.linalg.det(t.wcs.pixel_scale_matrix))) * 3600
    assert abs(scale - 0.2) < 1e-9
    assert len(t.patches()) == nx * ny and t.find_patch(t.center).inner_bbox.contains(
        Box(int(cx), int(cy), int(cx) + 1, int(cy) + 1)
    )


def _wcs_state(w):
    p = w.wcs
    return (
        p.crval.tolist(),
        p.crpix.tolist(),
        p.get_pc().tolist(),
        p.get_cdelt().tolist(),
        list(p.ctype),
        float(p.lonpole),
        float(p.latpole),
    )


def test_a_patch_pickles_and_stores_its_wcs_bit_for_bit():
    """A patch sent to a dask worker (pickled) or read back from a store's header warps with
    exactly the same WCS. Before, astropy's header round trip moved a CD matrix built in code
    by ~4e-19 (an ulp), so warps computed on process workers differed from in-process ones in
    the last bits (tests/test_faults.py compares the two and failed now and then)."""
    centre = SkyCoord(150.0, 2.0, unit="deg")
    tract = Tract(centre, radius=0.2, patch_inner_dimensions=(1000, 1000))
    grid = coaddx.Patch.from_wcs(make_tan_wcs(centre, (32.0, 32.0), 0.2, rotation=17.0), (64, 64))
    src = make_tan_wcs(SkyCoord(150.001, 2.001, unit="deg"), (40.0, 40.0), 0.26, rotation=3.0)
    for patch in (tract.patch(1, 1), grid):
        again = pickle.loads(pickle.dumps(patch))
        stored = wcs_from_header_string(patch.wcs_header())
        assert _wcs_state(again.wcs) == _wcs_state(patch.wcs) == _wcs_state(stored)
        a = source_coordinates(patch.wcs, src, (48, 48))
        b = source_coordinates(again.wcs, src, (48, 48))
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
