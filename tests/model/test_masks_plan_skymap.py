import numpy as np
import pytest
from astropy.coordinates import SkyCoord

import coaddx
from coaddx.model.masks import (
    bitmask,
    check_mask_planes,
    mask_planes_from_header,
    mask_planes_to_header,
    merge_mask_planes,
)
from coaddx.model.skymap import Box, Tract
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
