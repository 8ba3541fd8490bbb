"""Erosion and dilation on the mask's bounding box equal the distance transform of the whole array."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from QSMLib._morphology import dilate, erode


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


def test_empty_masks_stay_empty_and_zero_radius_copies():
    empty = np.zeros((6, 7, 8), bool)
    assert not erode(empty, 2.0, (1, 1, 1)).any() and not dilate(empty, 2.0, (1, 1, 1)).any()
    mask = np.zeros((6, 7, 8), bool)
    mask[2:4, 2:5, 3:6] = True
    assert np.array_equal(erode(mask, 0.0, (1, 1, 1)), mask) and np.array_equal(dilate(mask, 0.0, (1, 1, 1)), mask)
    # a 1-voxel erosion of a 2-voxel-thick slab leaves nothing; a 1-voxel dilation grows each side by one
    assert not erode(mask, 1.0, (1, 1, 1)).any()
    assert dilate(mask, 1.0, (1, 1, 1)).sum() > mask.sum()
