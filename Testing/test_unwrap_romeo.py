"""ROMEO-class unwrapping: exactness on the head phantom, the spanning tree, real data, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse
from scipy.sparse.csgraph import minimum_spanning_tree
from synthetic import TEST_DATA

from QSMLib._threads import limit_threads
from QSMLib._wrapping import wrap
from QSMLib.errors import QSMCancelled, QSMInputError
from QSMLib.fieldmap import weighted_linear
from QSMLib.io.nifti import load_acquisition, read_volume
from QSMLib.masking import magnitude_mask
from QSMLib.phantom import simulate_head
from QSMLib.phase import mcpc3ds
from QSMLib.unwrap import METHODS, laplacian, romeo
from QSMLib.unwrap.romeo import (
    _edge_levels,
    _nearest_reference,
    edge_weights,
    maximum_spanning_tree,
    romeo_unwrap_volume,
    unwrap_along_tree,
    voxel_quality,
)

ECHO_TIMES_S = (0.004, 0.008, 0.012, 0.016, 0.020)
INVIVO = TEST_DATA / "invivo_3echo_crop"


def two_pi_error_fraction(unwrapped: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of mask voxels where any echo differs from the truth by a nonzero multiple of 2 pi.

    The most common multiple over the mask is taken as the global offset first
    (unwrapping determines the phase only up to one global multiple).
    """
    turns = np.rint((unwrapped - truth) / (2 * np.pi)).astype(int)[:, mask]
    common = np.array([np.bincount(t - t.min()).argmax() + t.min() for t in turns])
    return float(np.mean(np.any(turns != common[:, None], axis=0)))


@pytest.fixture(scope="module")
def head():
    """3 mm phantom: sinus fields of several hundred Hz, phase offset, noise (SNR 100)."""
    return simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), echo_times_s=ECHO_TIMES_S, seed=1)


@pytest.fixture(scope="module")
def unwrapped_head(head):
    acq = head.acquisition
    offset_free, _ = mcpc3ds(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm)
    unwrapped, maps = romeo(offset_free, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm)
    return offset_free, unwrapped, maps


def _true_phase(head) -> np.ndarray:
    times = np.asarray(head.acquisition.echo_times_s, np.float32).reshape(-1, 1, 1, 1)
    return 2 * np.pi * head.total_field_hz[None] * times


def test_registry_has_romeo():
    assert METHODS["romeo"].function is romeo and METHODS["laplacian"].function is laplacian


def test_phantom_has_several_wraps_per_echo(head):
    # The test is only meaningful if the data really wrap: hundreds of Hz near the sinus.
    head_region = head.labels > 0
    cycles_first_echo = np.ptp(head.total_field_hz[head_region]) * ECHO_TIMES_S[0]
    assert cycles_first_echo > 3
    assert np.ptp(head.total_field_hz[head.brain_mask]) * ECHO_TIMES_S[-1] > 6


def test_romeo_has_no_2pi_errors_inside_the_brain(head, unwrapped_head):
    _, unwrapped, _ = unwrapped_head
    fraction = two_pi_error_fraction(unwrapped, _true_phase(head), head.brain_mask)
    assert fraction < 1e-3
    # After MCPC-3D-S the phase is 2 pi f TE: the global multiple is right too.
    turns = np.rint((unwrapped - _true_phase(head)) / (2 * np.pi))[:, head.brain_mask]
    assert np.mean(turns == 0) > 0.999


def test_laplacian_is_biased_where_romeo_is_exact(head, unwrapped_head):
    acq = head.acquisition
    offset_free, unwrapped, _ = unwrapped_head
    brain = head.brain_mask
    romeo_field, _ = weighted_linear(unwrapped, acq.magnitude, acq.echo_times_s, intercept=False)
    laplacian_phase = laplacian(offset_free, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm).phase
    laplacian_field, _ = weighted_linear(laplacian_phase, acq.magnitude, acq.echo_times_s)

    def demeaned_rms(field):
        error = (field - head.total_field_hz)[brain]
        return float(np.std(error))

    assert demeaned_rms(romeo_field) < 0.5
    assert demeaned_rms(laplacian_field) > 10 * demeaned_rms(romeo_field)


def test_quality_map_separates_brain_from_air(head, unwrapped_head):
    quality = unwrapped_head[2]["romeo_quality"]
    assert quality.shape == head.brain_mask.shape and quality.dtype == np.float32
    assert 0.0 <= quality.min() and quality.max() <= 1.0
    assert np.percentile(quality[head.brain_mask], 5) > 0.7
    assert np.percentile(quality[head.labels == 0], 95) < 0.1


def test_spanning_tree_is_a_maximum_spanning_tree():
    rng = np.random.default_rng(4)
    shape = (5, 6, 7)
    weights = rng.uniform(0, 1, (3, *shape)).astype(np.float32)
    levels = _edge_levels(weights, np.ones(shape, bool))
    first, second = maximum_spanning_tree(levels, shape)
    n = int(np.prod(shape))
    assert first.size == n - 1
    # A spanning tree: n - 1 edges that connect every voxel.
    tree = scipy.sparse.coo_matrix((np.ones(n - 1), (first, second)), shape=(n, n))
    assert scipy.sparse.csgraph.connected_components(tree, directed=False)[0] == 1
    # Same total cost as scipy's Kruskal on the plain grid graph.
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    exists = levels != 255
    starts, axes = np.nonzero(exists)
    costs = levels[exists].astype(float) + 1.0
    plain = scipy.sparse.coo_matrix((costs, (starts, starts + strides[axes])), shape=(n, n)).tocsr()
    reference = minimum_spanning_tree(plain).sum()
    cost_of = {(int(a), int(b)): c for a, b, c in zip(starts, starts + strides[axes], costs)}
    assert sum(cost_of[(int(a), int(b))] for a, b in zip(first, second)) == reference


def test_unwrapping_along_the_tree_is_exact_for_a_smooth_phase():
    grid = np.indices((30, 32, 28), dtype=np.float32)
    truth = 0.9 * grid[0] + 0.02 * (grid[1] - 16) ** 2 + 0.5 * np.sin(grid[2] / 3)
    unwrapped, quality = romeo_unwrap_volume(wrap(truth))
    difference = unwrapped - truth
    np.testing.assert_allclose(difference, difference.flat[0], atol=1e-4)
    assert np.isclose(difference.flat[0] / (2 * np.pi), np.round(difference.flat[0] / (2 * np.pi)), atol=1e-5)
    assert quality.min() > 0.5


def test_unwrap_along_tree_follows_parents():
    # A path 0 <- 1 <- 2 <- 3 with steps of 2.5 rad (wrapped to -3.78 + 2 pi).
    truth = np.array([0.0, 2.5, 5.0, 7.5], np.float32)
    order = np.arange(4, dtype=np.int32)
    parents = np.array([0, 0, 1, 2], np.int32)
    np.testing.assert_allclose(unwrap_along_tree(wrap(truth), order, parents), truth, atol=1e-5)


def test_edge_weights_and_voxel_quality_are_in_range():
    rng = np.random.default_rng(0)
    phase = rng.uniform(-np.pi, np.pi, (6, 7, 8)).astype(np.float32)
    weights = edge_weights(phase, magnitude=rng.uniform(0, 1, phase.shape), phase2=phase, te_ratio=0.5)
    assert weights.shape == (3, 6, 7, 8) and weights.dtype == np.float32
    assert weights.min() >= 0 and weights.max() <= 1
    assert np.all(weights[0, -1] == 0) and np.all(weights[1, :, -1] == 0) and np.all(weights[2, :, :, -1] == 0)
    quality = voxel_quality(weights)
    assert quality.shape == phase.shape and 0 <= quality.min() and quality.max() <= 1


@pytest.mark.parametrize("threads", [1, 2])
def test_voxel_quality_and_edge_levels_match_their_definition_across_slabs(threads):
    """Both are computed in slabs of rows on threads: the same values as the voxel-by-voxel definition
    (the mean of a voxel's up to six edges; an edge's cost level, 255 unless both ends have signal), on a
    volume of several slabs, whatever the thread count."""
    rng = np.random.default_rng(7)
    shape = (37, 90, 100)  # 9000 voxels per row: a slab of 29 rows, two slabs and a short one
    weights = edge_weights(rng.uniform(-np.pi, np.pi, shape).astype(np.float32),
                           magnitude=rng.uniform(0.1, 1, shape))
    signal = rng.uniform(size=shape) > 0.3
    with limit_threads(threads):
        quality = voxel_quality(weights)
        levels = _edge_levels(weights, signal)
    padded = np.pad(weights, ((0, 0), (1, 1), (1, 1), (1, 1)))
    inner = (slice(1, -1),) * 3
    own = padded[0][inner] + padded[1][inner] + padded[2][inner]
    lower = padded[0][:-2, 1:-1, 1:-1] + padded[1][1:-1, :-2, 1:-1] + padded[2][1:-1, 1:-1, :-2]
    edges = 6.0 - sum((np.indices(shape)[a] == 0) + (np.indices(shape)[a] == shape[a] - 1) for a in range(3))
    np.testing.assert_allclose(quality, (own + lower) / edges, rtol=1e-6)
    for axis in range(3):
        expected = np.rint((1.0 - weights[axis]) * 254).astype(np.uint8)
        both = np.zeros(shape, bool)
        low = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        high = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        both[low] = signal[low] & signal[high]
        expected[~both] = 255
        np.testing.assert_array_equal(levels[:, axis], expected.ravel())


@pytest.mark.parametrize("shape", [(9, 10, 11), (16, 7, 12)])
def test_every_voxel_takes_the_value_of_a_main_voxel_nearby(shape):
    """_nearest_reference on odd and even sizes: each voxel gets the value of a main voxel; where its 2x2x2
    block holds main voxels, one of those (values distinct, so the source is known)."""
    rng = np.random.default_rng(5)
    values = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    main = rng.random(shape) > 0.85
    nearest = _nearest_reference(values, main)
    assert nearest.shape == shape and np.isin(nearest, values[main]).all()
    source = np.argwhere(np.isin(values, nearest) & main)
    where = {float(values[tuple(p)]): p for p in source}
    for voxel in np.ndindex(shape):
        block = tuple(slice(2 * (c // 2), 2 * (c // 2) + 2) for c in voxel)
        if main[block].any():
            assert np.all(where[float(nearest[voxel])] // 2 == np.array(voxel) // 2)


def test_axis_order_does_not_matter(head, unwrapped_head):
    acq = head.acquisition
    offset_free, unwrapped, _ = unwrapped_head
    transposed = np.transpose(offset_free, (0, 3, 1, 2))
    again, _ = romeo(transposed, np.transpose(acq.magnitude, (0, 3, 1, 2)), acq.echo_times_s, (3, 3, 3))
    brain = np.transpose(head.brain_mask, (2, 0, 1))
    truth = np.transpose(_true_phase(head), (0, 3, 1, 2))
    assert two_pi_error_fraction(again, truth, brain) < 1e-3


def test_individual_unwrapping_needs_no_offset_removal(head):
    acq = head.acquisition
    separate, _ = romeo(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm, individual=True)
    truth = head.phase_offset_rad[None] + _true_phase(head)
    assert two_pi_error_fraction(separate, truth, head.brain_mask) < 5e-3
    # Every echo is on the same global branch as the truth, up to one common multiple.
    turns = np.rint((separate - truth) / (2 * np.pi))[:, head.brain_mask]
    assert len({int(np.median(t)) for t in turns}) == 1


def test_same_input_same_bits(head, unwrapped_head):
    acq = head.acquisition
    again, maps = romeo(unwrapped_head[0], acq.magnitude, acq.echo_times_s, acq.voxel_size_mm)
    np.testing.assert_array_equal(again, unwrapped_head[1])
    np.testing.assert_array_equal(maps["romeo_quality"], unwrapped_head[2]["romeo_quality"])


def test_progress_and_cancel(head):
    acq = head.acquisition
    seen = []
    romeo(acq.phase[:2], acq.magnitude[:2], acq.echo_times_s[:2], acq.voxel_size_mm,
          progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    stop = threading.Event()
    stop.set()
    with pytest.raises(QSMCancelled):
        romeo(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm, cancel=stop)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(magnitude=np.ones((2, 4, 4, 4))), "shaped"),
        (dict(echo_times_s=(0.004,)), "echo time"),
        (dict(template_echo=3), "template_echo"),
    ],
)
def test_bad_input_is_refused(change, message):
    arguments = dict(phase=np.zeros((3, 4, 4, 4)), magnitude=np.ones((3, 4, 4, 4)),
                     echo_times_s=(0.004, 0.008, 0.012), voxel_size_mm=(1, 1, 1))
    arguments.update(change)
    template = arguments.pop("template_echo", 0)
    with pytest.raises(QSMInputError, match=message):
        romeo(**arguments, template_echo=template)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def invivo():
    acquisition, _ = load_acquisition([INVIVO / "mag.nii.gz"], [INVIVO / "phase.nii.gz"],
                                      echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0)
    return acquisition


def test_invivo_unwrapped_phase_is_linear_in_te(invivo):
    offset_free, _ = mcpc3ds(invivo.phase, invivo.magnitude, invivo.echo_times_s, invivo.voxel_size_mm)
    unwrapped, _ = romeo(offset_free, invivo.magnitude, invivo.echo_times_s, invivo.voxel_size_mm)
    tissue = magnitude_mask(invivo.magnitude, invivo.voxel_size_mm)
    _, fit = weighted_linear(unwrapped, invivo.magnitude, invivo.echo_times_s, intercept=False)
    residual = fit["fit_residual_rad"][tissue]
    # A 2 pi error in one echo would leave a residual of about 2 rad.
    assert np.median(residual) < 0.05 and np.percentile(residual, 99.9) < 0.5
    for echo in range(unwrapped.shape[0]):
        for axis in range(3):
            step = np.abs(np.diff(unwrapped[echo], axis=axis))
            both = np.delete(tissue, -1, axis=axis) & np.delete(tissue, 0, axis=axis)
            assert np.all(step[both] < np.pi)


def test_nan_voxels_come_back_as_nan():
    # The NaN test file: 2 echoes, one NaN column per slice, radians beyond +-pi.
    raw, _ = read_volume(INVIVO / "phase_with_nan_2echo.nii.gz")
    phase = wrap(raw.astype(np.float32))
    magnitude = np.where(np.isnan(raw), np.nan, 1.0).astype(np.float32)
    unwrapped, maps = romeo(phase, magnitude, (0.004, 0.008), (1.0, 1.0, 1.0))
    invalid = np.isnan(raw).any(axis=0)
    assert np.all(np.isnan(unwrapped[:, invalid])) and np.all(np.isfinite(unwrapped[:, ~invalid]))
    assert np.all(maps["romeo_quality"][invalid] == 0)
    # Elsewhere the result is the input up to whole turns.
    turns = (unwrapped[:, ~invalid] - phase[:, ~invalid]) / (2 * np.pi)
    np.testing.assert_allclose(turns, np.round(turns), atol=1e-4)
