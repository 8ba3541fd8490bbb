"""Erosion and dilation on the mask's bounding box equal the distance transform of the whole array.

Hole filling on the bounding box equals scipy's on the whole array.
"""

import numpy as np
import pytest
import scipy.ndimage as ndi

from QSMLib._morphology import _MAX_REACH, dilate, erode, fill_holes, within_distance


def _random_mask(rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float], float]:
    shape = tuple(int(n) for n in rng.integers(5, 30, 3))
    mask = ndi.gaussian_filter(rng.random(shape), 2) > rng.uniform(0.45, 0.55)
    mask[tuple(int(i) for i in rng.integers(0, 5, 3))] = True  # never empty
    if rng.random() < 0.3:
        mask[0] = True  # reaches the array's edge: nothing is eroded from there
    voxel = tuple(float(v) for v in rng.uniform(0.5, 2.5, 3))
    return mask, voxel, float(rng.uniform(0.3, 6.0))


@pytest.mark.parametrize("seed", range(40))
def test_erode_and_dilate_match_the_whole_array_transform(seed):
    mask, voxel, radius = _random_mask(np.random.default_rng(seed))
    assert np.array_equal(erode(mask, radius, voxel), ndi.distance_transform_edt(mask, sampling=voxel) > radius)
    assert np.array_equal(dilate(mask, radius, voxel), ndi.distance_transform_edt(~mask, sampling=voxel) <= radius)


@pytest.mark.parametrize("voxel", [(1.0, 1.0, 1.0), (0.7, 0.7, 0.7), (1.0, 1.0, 2.0), (0.5, 1.5, 1.0)])
def test_within_distance_equals_the_distance_transform_at_ties_and_past_the_shifted_minima(voxel):
    # Radii that are exact distances of voxel pairs (3 = 3 voxels, 5 = a 3-4-0 diagonal at 1 mm, 2.1 = 3 x 0.7)
    # decide ties; radii past _MAX_REACH voxels take scipy's transform.
    rng = np.random.default_rng(3)
    seeds = rng.random((23, 19, 21)) > 0.995
    seeds[11, 9, 10] = True
    for radius in (1.0, 2.0, 2.1, 2.5, 3.0, 5.0, 1.4, (_MAX_REACH + 2) * max(voxel)):
        expected = ndi.distance_transform_edt(~seeds, sampling=voxel) <= radius
        np.testing.assert_array_equal(within_distance(seeds, radius, voxel), expected, err_msg=f"radius {radius}")


def test_empty_masks_stay_empty_and_zero_radius_copies():
    empty = np.zeros((6, 7, 8), bool)
    assert not erode(empty, 2.0, (1, 1, 1)).any() and not dilate(empty, 2.0, (1, 1, 1)).any()
    mask = np.zeros((6, 7, 8), bool)
    mask[2:4, 2:5, 3:6] = True
    assert np.array_equal(erode(mask, 0.0, (1, 1, 1)), mask) and np.array_equal(dilate(mask, 0.0, (1, 1, 1)), mask)
    # a 1-voxel erosion of a 2-voxel-thick slab leaves nothing; a 1-voxel dilation grows each side by one
    assert not erode(mask, 1.0, (1, 1, 1)).any()
    assert dilate(mask, 1.0, (1, 1, 1)).sum() > mask.sum()


@pytest.mark.parametrize("density", [0.3, 0.6, 0.8])
def test_fill_holes_equals_scipys_and_fills_a_closed_cavity(density):
    rng = np.random.default_rng(7)
    for shape in ((12, 15, 9), (1, 6, 6), (20, 3, 11)):
        mask = rng.random(shape) > 1 - density
        np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    shell = np.zeros((9, 10, 11), bool)
    shell[1:8, 1:9, 0:11] = True  # reaches the array's edge along the last axis
    shell[3:5, 3:6, 2:8] = False  # a closed cavity
    shell[3:5, 3:6, 9:] = False  # open to the edge: not a hole
    filled = fill_holes(shell)
    assert filled[3:5, 3:6, 2:8].all() and not filled[3:5, 3:6, 9:].any()
    assert not fill_holes(np.zeros((4, 4, 4), bool)).any()
