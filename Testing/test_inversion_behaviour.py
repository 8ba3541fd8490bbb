"""Mechanics of every dipole inversion: contract, geometry, errors, progress and cancellation.

Accuracy lives in test_inversion_accuracy.py; here the volumes are small and
the checks are about behaviour that must hold for any data.
"""

import inspect
import threading

import numpy as np
import pytest

from QSMLib._morphology import erode
from QSMLib.dipole import forward_field, unit_vector
from QSMLib.errors import QSMCancelled, QSMInputError
from QSMLib.inversion import METHODS
from QSMLib.inversion._regularization import EDGE_RAMP, estimate_edges
from QSMLib.inversion.tfi import (
    BREGMAN_GAIN,
    COARSE_SIGMA_MM,
    CUT_FACE_FADE,
    FIRST_PASS_TOLERANCE_FACTOR,
    MAX_TFI_SHARE,
    NOISY_DETAIL_RATIO,
    RELAXED_TOLERANCE_FACTOR,
    TFI_COARSE_SHARE,
    TFI_SHARE,
    _bregman_data,
    _noise_guard,
    blend_estimates,
    cut_face_fade,
)
from QSMLib.metrics import nrmse
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PipelineConfig
from QSMLib.units import ppm_to_hz

ITERATIVE = ("tv", "nltv", "rts", "medi", "sstv")
#: Iteration budgets that keep the small-volume tests quick (behaviour, not accuracy).
QUICK = {
    "tv": {"max_iterations": 15},
    "nltv": {"max_iterations": 15},
    "rts": {"max_iterations": 10},
    "medi": {"max_iterations": 2, "cg_max_iterations": 15},
    "sstv": {"max_iterations": 15},
}


def _blobs(voxel_size_mm, b0_direction, shape=(40, 36, 30), supersample=2):
    """Ellipsoidal mask with three blobs, the field simulated on a finer grid and averaged down."""
    fine_shape = tuple(n * supersample for n in shape)
    fine_voxel = tuple(v / supersample for v in voxel_size_mm)
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(fine_shape, fine_voxel)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    extent = [n * v / 2 for n, v in zip(shape, voxel_size_mm)]
    brain = (x / (0.75 * extent[0])) ** 2 + (y / (0.75 * extent[1])) ** 2 + (z / (0.75 * extent[2])) ** 2 <= 1
    chi = np.zeros(fine_shape, dtype=np.float32)
    for centre, radius, value in (((-6, 4, 0), 5.0, 0.15), ((7, -5, 3), 4.0, -0.08), ((0, 6, -6), 3.5, 0.3)):
        chi[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2] = value
    chi[~brain] = 0
    field = ppm_to_hz(forward_field(chi, fine_voxel, b0_direction, pad_factor=1.5), 3.0)

    def down(volume):
        blocks = volume.reshape(shape[0], supersample, shape[1], supersample, shape[2], supersample)
        return blocks.mean(axis=(1, 3, 5)).astype(np.float32)

    mask = down(brain.astype(np.float32)) > 0.5
    magnitude = np.stack([np.where(mask, 1.0 - down(np.abs(chi)), 0) * np.exp(-0.01 * n) for n in range(3)])
    return down(field), mask, down(chi), magnitude.astype(np.float32)


def _run(method, field, mask, voxel_size_mm, b0_direction, magnitude=None, **params):
    entry = METHODS[method]
    available = {"b0_direction": b0_direction, "b0_tesla": 3.0, "magnitude": magnitude}
    inputs = {name: available[name] for name in entry.inputs if available.get(name) is not None}
    return entry(field, mask, voxel_size_mm, **inputs, **params).chi_ppm


@pytest.fixture(scope="module")
def oblique_blobs():
    voxel, b0 = (1.0, 1.2, 1.5), tuple(unit_vector((0.2, -0.35, 1.0)))
    return voxel, b0, *_blobs(voxel, b0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_returns_float32_ppm_zero_outside_the_mask(oblique_blobs, method):
    voxel, b0, field, mask, _, magnitude = oblique_blobs
    chi = _run(method, field, mask, voxel, b0, magnitude, **QUICK.get(method, {}))
    assert chi.dtype == np.float32 and chi.shape == mask.shape
    assert np.all(np.isfinite(chi)) and np.all(chi[~mask] == 0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_uses_the_oblique_b0_direction_and_anisotropic_voxels(oblique_blobs, method):
    voxel, b0, field, mask, truth, magnitude = oblique_blobs
    right = nrmse(_run(method, field, mask, voxel, b0, magnitude), truth, mask)
    wrong = nrmse(_run(method, field, mask, voxel, (0.0, 0.0, 1.0), magnitude), truth, mask)
    swapped = nrmse(_run(method, field, mask, voxel[::-1], b0, magnitude), truth, mask)
    assert right < 60.0
    assert right < 0.8 * min(wrong, swapped)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_knob_is_a_valid_pipeline_parameter_with_a_default(method):
    parameters = inspect.signature(METHODS[method].function).parameters
    config = PipelineConfig.from_dict({"inversion": {"method": method}})
    assert config.inversion.method == method
    for name in METHODS[method].tunable_parameters():
        default = parameters[name].default
        assert default is not inspect.Parameter.empty, f"{method}.{name} has no default"
        PipelineConfig.from_dict({"inversion": {"method": method, "params": {name: default}}})


@pytest.mark.parametrize("method", ITERATIVE)
def test_empty_mask_is_refused_with_advice(oblique_blobs, method):
    voxel, b0, field, mask, _, _ = oblique_blobs
    with pytest.raises(QSMInputError, match="mask"):
        _run(method, field, np.zeros_like(mask), voxel, b0)


@pytest.mark.parametrize(
    "method, params",
    [("tv", {"regularization": -1.0}), ("nltv", {"echo_time_s": 0.0}), ("rts", {"delta": 0.0}),
     ("medi", {"edge_fraction": 1.5}), ("medi", {"initial": "tkd"}), ("l2", {"regularization": "best"}),
     ("nltv", {"newton_iterations": 0}), ("tfi", {"merit_every": -5}), ("tfi", {"merit_every": 2.5}),
     ("tfi", {"merit_factor": 0.0}), ("tfi", {"cut_margin_mm": -16.0}), ("tfi", {"tolerance": 0.0}),
     ("tfi", {"smv_radius_mm": -4.0}), ("tfi", {"chi_edge_fraction": 1.0}), ("tfi", {"chi_edge_fraction": -0.1}),
     ("tfi", {"bregman_gain": -0.1}), ("tfi", {"bregman_gain": 1.5}),
     ("sstv", {"radius_mm": 0.0}), ("sstv", {"pad_factor": 0.0}),
     ("sstv", {"merit_every": -1}), ("sstv", {"edge_fraction": 1.5}), ("sstv", {"regularization": -1.0}),
     ("sstv", {"kernel": "continuous"})],
)
def test_bad_parameters_are_refused(oblique_blobs, method, params):
    voxel, b0, field, mask, _, _ = oblique_blobs
    with pytest.raises(QSMInputError):
        _run(method, field, mask, voxel, b0, **params)


@pytest.mark.parametrize("voxel_size_mm, expected", [((0.7, 0.7, 0.7), 0.0035), ((1.0, 1.0, 1.0), 0.005),
                                                     ((1.0, 1.0, 2.0), 0.005 * 2 ** (1 / 3)), ((3.0, 3.0, 3.0), 0.01)])
def test_tfi_stops_later_on_finer_grids_and_records_where(voxel_size_mm, expected):
    """The automatic tolerance is 0.005 per mm of voxel size (at most 0.01), and provenance keeps it."""
    field, mask, _, _ = _blobs(voxel_size_mm, (0, 0, 1), shape=(24, 22, 20), supersample=1)
    field = field + np.float32(5.0) * np.indices(mask.shape, dtype=np.float32)[2]  # a background gradient
    tfi = METHODS["tfi"]
    automatic = tfi(field, mask, voxel_size_mm, b0_direction=(0, 0, 1), b0_tesla=3.0).parameters
    fixed = tfi(field, mask, voxel_size_mm, b0_direction=(0, 0, 1), b0_tesla=3.0, tolerance=0.01).parameters
    assert automatic["tolerance"] == pytest.approx(expected) and fixed["tolerance"] == 0.01
    if expected < 0.01:
        assert automatic["iterations"] > fixed["iterations"]
    else:
        assert automatic["iterations"] == fixed["iterations"]


@pytest.mark.parametrize("voxel_size_mm, radius_mm", [((0.7, 0.7, 0.7), 4.0), ((1.0, 1.0, 1.0), 4.0),
                                                      ((1.5, 1.5, 1.5), 6.0), ((2.0, 2.0, 2.0), 6.0)])
def test_tfi_averages_a_single_step_solve_of_four_voxels_radius_within_4_to_6_mm(voxel_size_mm, radius_mm):
    """The single-step SMV solve runs with TFI by default; provenance keeps its radius, lambda and iterations."""
    field, mask, _, _ = _blobs(voxel_size_mm, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    field = field + np.float32(5.0) * np.indices(mask.shape, dtype=np.float32)[2]  # a background gradient
    tfi = METHODS["tfi"]
    averaged = tfi(field, mask, voxel_size_mm, b0_direction=(0, 0, 1), b0_tesla=3.0)
    alone = tfi(field, mask, voxel_size_mm, b0_direction=(0, 0, 1), b0_tesla=3.0, smv_radius_mm=0.0)
    chosen = averaged.parameters
    assert chosen["smv_radius_mm"] == radius_mm and chosen["smv_iterations"] > 0
    assert chosen["smv_regularization"] == pytest.approx(0.15 * chosen["regularization"])
    assert alone.parameters["smv_skipped"] == "turned off" and "smv_iterations" not in alone.parameters
    assert np.abs(averaged.chi_ppm - alone.chi_ppm).max() > 1e-3


def test_over_relaxed_admm_stops_sooner_with_the_same_accuracy():
    """``relaxation`` 1.8 (a speed option; plain ADMM is the default) takes 2.5 times the automatic tolerance and
    runs fewer iterations for about the same chi. Measured on these blobs (1.5 mm): 25 + 15 + 10 iterations (two
    passes and the Bregman step) and chi NRMSE 15.78 % plain, 14 + 9 + 7 and 15.60 % over-relaxed."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, chi, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26))
    field = field + np.float32(3.0) * np.indices(mask.shape, dtype=np.float32)[2]  # a background gradient
    common = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude)
    plain = METHODS["tfi"](field, mask, voxel, **common)
    relaxed = METHODS["tfi"](field, mask, voxel, relaxation=1.8, **common)
    assert plain.parameters["relaxation"] == 1.0 and relaxed.parameters["relaxation"] == 1.8
    assert relaxed.parameters["tolerance"] == pytest.approx(RELAXED_TOLERANCE_FACTOR * plain.parameters["tolerance"])

    def iterations(result):
        return sum(result.parameters[key] for key in ("iterations", "chi_edge_iterations", "bregman_iterations"))

    assert iterations(relaxed) < 0.7 * iterations(plain)
    assert nrmse(relaxed.chi_ppm, chi, relaxed.mask) < 16.0 and nrmse(plain.chi_ppm, chi, plain.mask) < 16.2
    for method in ("tfi", "sstv"):
        for relaxation in (0.0, 2.0):
            with pytest.raises(QSMInputError, match="relaxation must lie in"):
                METHODS[method](field, mask, voxel, relaxation=relaxation, **common)


@pytest.mark.parametrize("edges", [False, True])
def test_tfi_is_the_blend_of_tfi_alone_and_sstv_with_its_lambda(edges):
    """TFI runs its single-step solve on a frame of its own (the mask's box and the ball's margin, not TFI's
    shell): the reported chi is exactly the blend (:func:`blend_estimates`) of TFI alone and of :func:`sstv`
    given TFI's single-step lambda and edge fraction (TFI's default differs from SS-TV's below 3 mm), with the
    magnitude's edges free or without them."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, _, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    grid = np.indices(mask.shape, dtype=np.float32)
    field = field + np.float32(3.0) * grid[2] - np.float32(2.0) * grid[0]  # a background gradient
    common = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude if edges else None, tolerance=1e-9,
                  max_iterations=12)
    # one pass and no Bregman step: the second pass (chi's own edges) and the step start from this blend
    both = METHODS["tfi"](field, mask, voxel, regularization=1e-4, chi_edge_fraction=0.0, bregman_gain=0.0,
                          **common)
    alone = METHODS["tfi"](field, mask, voxel, regularization=1e-4, smv_radius_mm=0.0, chi_edge_fraction=0.0,
                           **common)
    chosen = both.parameters
    single = METHODS["sstv"](field, mask, voxel, regularization=chosen["smv_regularization"],
                             radius_mm=chosen["smv_radius_mm"], edge_fraction=chosen["edge_fraction"], **common)
    assert chosen["smv_iterations"] == 12 and np.array_equal(both.mask, single.mask)
    blend, blend_parameters = blend_estimates(alone.chi_ppm, single.chi_ppm, both.mask, voxel)
    assert {key: chosen[key] for key in blend_parameters} == blend_parameters
    assert chosen["tfi_coarse_share"] == TFI_COARSE_SHARE and TFI_SHARE <= chosen["tfi_share"] <= MAX_TFI_SHARE
    np.testing.assert_allclose(both.chi_ppm, blend, atol=1e-6 * np.abs(blend).max())
    # ... which a plain weighted mean with either share is not (they differ by 0.5 % of the map's largest
    # value here, 5000 times the tolerance above)
    for share in (TFI_SHARE, TFI_COARSE_SHARE):
        mean = np.where(both.mask, share * alone.chi_ppm + (1 - share) * single.chi_ppm, 0)
        assert np.abs(both.chi_ppm - mean).max() > 1e-3 * np.abs(blend).max()


def test_estimate_edges_frees_chis_strongest_edges_between_voxels_that_hold_an_estimate():
    """The faces of a nucleus are the strongest edges; values outside ``valid`` (here far larger) take no part;
    between the edges and the rest the weight falls linearly (``EDGE_RAMP``)."""
    rng = np.random.default_rng(3)
    chi = rng.normal(0.0, 0.005, (24, 22, 20)).astype(np.float32)
    chi[8:14, 7:13, 6:12] += np.float32(0.2)
    valid = np.zeros(chi.shape, dtype=bool)
    valid[3:21, 3:19, 3:17] = True
    chi[~valid] = 5.0
    weight = estimate_edges(chi, valid, (1.0, 1.0, 1.0), 0.05)
    assert weight.dtype == np.float32 and np.all(weight[~valid] == 1)
    assert weight.min() == 0 and weight.max() == 1
    # forward differences: each face's edge is kept at its lower voxel along the axis
    faces = np.zeros(chi.shape, dtype=bool)
    faces[7, 7:13, 6:12] = faces[13, 7:13, 6:12] = True
    faces[8:14, 6, 6:12] = faces[8:14, 12, 6:12] = True
    faces[8:14, 7:13, 5] = faces[8:14, 7:13, 11] = True
    assert np.all(weight[faces] == 0)
    # 5 % of the components between valid voxels: the 216 face components, then the largest noise steps
    # (edges above the 1 - 0.75 x 5 % quantile; the ramp down to weight 1 at the 1 - 1.25 x 5 % quantile)
    pairs = sum(int((valid & np.roll(valid, -1, axis)).sum()) for axis in range(3))
    partial = (weight > 0) & (weight < 1)
    assert 216 < int((weight == 0).sum()) <= (1 - EDGE_RAMP) * 0.05 * pairs + 1
    assert 0 < int(partial.sum()) <= 2 * EDGE_RAMP * 0.05 * pairs + 1
    # on the ramp a voxel's weight falls linearly with its largest forward step to a valid neighbour
    steps = np.stack([np.where(valid & np.roll(valid, -1, axis), np.abs(np.roll(chi, -1, axis) - chi), 0)
                      for axis in range(3)]).max(axis=0)
    assert np.corrcoef(weight[partial], steps[partial])[0, 1] < -0.999
    # a finer fraction makes only the faces edges
    finer = estimate_edges(chi, valid, (1.0, 1.0, 1.0), 216 / pairs / (1 - EDGE_RAMP))
    assert np.array_equal(finer == 0, faces)


def test_tfis_second_pass_frees_the_first_estimates_edges_and_says_so():
    voxel = (1.5, 1.5, 1.5)
    field, mask, _, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    common = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude, regularization=1e-4, max_iterations=20)
    one = METHODS["tfi"](field, mask, voxel, chi_edge_fraction=0.0, **common)
    two = METHODS["tfi"](field, mask, voxel, chi_edge_fraction=0.2, **common)
    assert one.parameters["chi_edge_fraction"] == 0.0 and "chi_edge_iterations" not in one.parameters
    # the first of two passes stops at twice the tolerance, a single pass at the tolerance itself
    assert one.parameters["first_pass_tolerance"] == one.parameters["tolerance"]
    assert two.parameters["first_pass_tolerance"] == FIRST_PASS_TOLERANCE_FACTOR * two.parameters["tolerance"]
    chosen = two.parameters
    assert chosen["chi_edge_fraction"] == 0.2 and chosen["chi_edge_iterations"] >= 1
    assert chosen["chi_edge_smv_iterations"] >= 1 and 0 < chosen["chi_edge_voxels"] < int(two.mask.sum())
    assert np.array_equal(one.mask, two.mask) and np.all(two.chi_ppm[~two.mask] == 0)
    assert np.abs(two.chi_ppm - one.chi_ppm).max() > 1e-3 * np.abs(one.chi_ppm).max()


def test_tfis_bregman_step_gives_back_detail_the_prior_took_unless_the_detail_is_noise():
    """Blobs at 1.5 mm, lambda chosen from the noise. With 0.3 Hz of noise the step (gain 0.5) measured chi
    NRMSE 20.95 against 22.48 % without it (fine detail ratio 0.90; 20.22 against 22.36 % before the step
    started from MERIT's weights). With 1 Hz SS-TV's finest detail carries 1.33 times TFI's, above
    ``NOISY_DETAIL_RATIO``: the step does not run, and chi is the same bit for bit."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, chi, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26))
    rng = np.random.default_rng(0)
    common = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude, max_iterations=20)
    for noise_hz in (0.3, 1.0):
        noisy = field + rng.normal(0, noise_hz, field.shape).astype(np.float32)
        without = METHODS["tfi"](noisy, mask, voxel, bregman_gain=0.0, **common)
        step = METHODS["tfi"](noisy, mask, voxel, bregman_gain=0.5, **common)
        assert without.parameters["bregman_gain"] == 0.0 and "bregman_iterations" not in without.parameters
        assert np.array_equal(step.mask, without.mask)
        if noise_hz == 0.3:
            assert step.parameters["bregman_detail_ratio"] < NOISY_DETAIL_RATIO[0]
            assert step.parameters["bregman_gain"] == 0.5
            assert step.parameters["bregman_iterations"] >= 2 and step.parameters["bregman_smv_iterations"] >= 2
            assert nrmse(step.chi_ppm, chi, step.mask) < nrmse(without.chi_ppm, chi, without.mask) - 1.2
        else:
            assert step.parameters["bregman_detail_ratio"] > NOISY_DETAIL_RATIO[1]
            assert step.parameters["bregman_gain"] == 0.0 and "bregman_iterations" not in step.parameters
            assert np.array_equal(step.chi_ppm, without.chi_ppm)


def test_the_bregman_steps_data_add_the_residuals_share_where_the_data_term_applies_but_not_outliers():
    rng = np.random.default_rng(1)
    shape = (8, 6, 10)
    field, chi = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    kernel = np.fft.rfftn(rng.normal(size=shape)).real.astype(np.float32)
    weight = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    region = rng.random(shape) > 0.5
    residual = field - np.fft.irfftn(np.fft.rfftn(chi) * kernel, shape, axes=(0, 1, 2))
    added, same_weight = _bregman_data(field, chi, kernel, weight, region, shape, 0.25, None)
    assert np.allclose(added[region], (field + 0.25 * residual)[region], atol=1e-5)
    assert np.array_equal(added[~region], field[~region]) and same_weight is weight
    # one voxel's field off by far more than the rest's residual (SD 1.6, which the outlier raises to 12):
    # MERIT's factor at 5 SD takes its weight down, and the same share of its residual is added
    outlier = tuple(np.argwhere(region)[0])
    field[outlier] += 200.0
    residual[outlier] += 200.0
    added, trusted = _bregman_data(field, chi, kernel, weight, region, shape, 0.25, 5.0)
    share = trusted[outlier] / weight[outlier]
    assert share < 0.25  # measured 0.16
    assert added[outlier] - field[outlier] == pytest.approx(0.25 * share * residual[outlier], rel=1e-4)
    others = region.copy()
    others[outlier] = False
    assert np.allclose(added[others], (field + 0.25 * residual)[others], atol=1e-5)
    assert np.array_equal(trusted[others], weight[others])


def test_the_bregman_steps_gain_falls_across_the_noisy_detail_range():
    low, high = NOISY_DETAIL_RATIO
    assert _noise_guard(0.8) == 1.0 and _noise_guard(low) == 1.0
    assert _noise_guard((low + high) / 2) == pytest.approx(0.5)
    assert _noise_guard(high) == 0.0 and _noise_guard(1.5) == 0.0


def test_tfi_alones_second_pass_runs_until_its_stopping_rule_not_one_iteration():
    """Warm started, the first ADMM iteration barely moves chi (the new prior acts after its chi step): the
    rule is not tested there. TFI alone (no single-step solve, as on a slab) measured 10 iterations and a
    change of 8.9 % of the map's largest value (1 iteration and 0.58 % when the rule stopped it at once)."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, _, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    common = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude, regularization=1e-4, max_iterations=20,
                  smv_radius_mm=0.0)
    one = METHODS["tfi"](field, mask, voxel, chi_edge_fraction=0.0, **common)
    two = METHODS["tfi"](field, mask, voxel, chi_edge_fraction=0.2, **common)
    assert "chi_edge_smv_iterations" not in two.parameters and two.parameters["chi_edge_iterations"] > 2
    assert np.abs(two.chi_ppm - one.chi_ppm).max() > 0.05 * np.abs(one.chi_ppm).max()


def test_blend_takes_tfis_coarse_share_of_a_smooth_difference_and_its_fine_share_of_fine_detail():
    """SS-TV plus a constant: the blend lies ``TFI_COARSE_SHARE`` of the way to TFI, also at the mask's edge
    (the mean is normalised over the mask); SS-TV plus a checkerboard (the finest detail): ``TFI_SHARE`` of
    the way, one Gaussian SD inside the mask."""
    voxel = (1.5, 1.0, 2.0)
    shape = (48, 60, 40)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    radii = np.array(shape, np.float32) / 2 - 3
    mask = (((grid - centre.reshape(3, 1, 1, 1)) / radii.reshape(3, 1, 1, 1)) ** 2).sum(axis=0) <= 1
    rng = np.random.default_rng(4)
    sstv_chi = rng.normal(0, 0.05, shape).astype(np.float32)
    blend, parameters = blend_estimates(sstv_chi + np.float32(0.1), sstv_chi, mask, voxel)
    np.testing.assert_allclose(blend[mask], sstv_chi[mask] + TFI_COARSE_SHARE * 0.1, atol=1e-5)
    assert np.all(blend[~mask] == 0)
    assert parameters["tfi_share"] == TFI_SHARE and abs(parameters["fine_detail_ratio"] - 1) < 1e-4
    checker = np.where(grid.sum(axis=0) % 2 == 0, 0.1, -0.1).astype(np.float32)
    blend, parameters = blend_estimates(sstv_chi + checker, sstv_chi, mask, voxel)
    deep = erode(mask, COARSE_SIGMA_MM, voxel)
    assert deep.sum() > 0.2 * mask.sum()
    assert parameters["tfi_share"] == TFI_SHARE and parameters["fine_detail_ratio"] < 1
    np.testing.assert_allclose(blend[deep], (sstv_chi + TFI_SHARE * checker)[deep], atol=0.01 * 0.1)


def test_blend_gives_tfi_more_of_the_fine_detail_where_sstvs_carries_more_noise():
    """SS-TV = TFI + white noise: its finest detail has the more variance. Noise of 0.3 of the tissue's
    detail SD (variance ratio measured 1.09: below the range) leaves TFI's share at ``TFI_SHARE``; 0.4
    (1.16) raises it part of the way (0.69); 1.0 (2.01) to ``MAX_TFI_SHARE``, where the blend keeps
    ``1 - MAX_TFI_SHARE`` of the noise."""
    voxel = (1.0, 1.0, 1.0)
    shape = (40, 44, 36)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    rng = np.random.default_rng(7)
    tfi_chi = rng.normal(0, 0.05, shape).astype(np.float32)
    noise = rng.normal(0, 0.05, shape).astype(np.float32)
    shares, ratios = {}, {}
    for level in (0.3, 0.4, 1.0):
        blend, parameters = blend_estimates(tfi_chi, tfi_chi + np.float32(level) * noise, mask, voxel)
        shares[level], ratios[level] = parameters["tfi_share"], parameters["fine_detail_ratio"]
    low, high = NOISY_DETAIL_RATIO
    assert ratios[0.3] < low < ratios[0.4] < high < ratios[1.0]
    assert shares[0.3] == TFI_SHARE and TFI_SHARE < shares[0.4] < MAX_TFI_SHARE and shares[1.0] == MAX_TFI_SHARE
    # with the largest noise: what remains of it in the blend, deep in the mask (the coarse part is tiny here)
    deep = erode(mask, COARSE_SIGMA_MM, voxel)
    left = (blend - tfi_chi)[deep] / noise[deep]
    assert abs(np.median(left) - (1 - MAX_TFI_SHARE)) < 0.01


def test_tfi_says_where_the_single_step_solve_has_no_data_and_blends_only_its_fine_detail_on_a_slab():
    """A local field and a mask thinner than the ball: TFI alone. A slab cut along B0 or a crop by the field of
    view: SS-TV gives only its fine detail, away from the cut faces. The Bregman step runs with the whole
    heads' blend alone."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, _, _ = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    tfi = METHODS["tfi"]

    def said(volume_mask, **params):
        parameters = tfi(field, volume_mask, voxel, b0_direction=(0, 0, 1), b0_tesla=3.0, max_iterations=2,
                         **params).parameters
        whole_heads_blend = parameters.get("tfi_coarse_share") == TFI_COARSE_SHARE
        gain = BREGMAN_GAIN * _noise_guard(parameters["bregman_detail_ratio"]) if whole_heads_blend else 0.0
        assert parameters["bregman_gain"] == gain and ("bregman_iterations" in parameters) == (gain > 0)
        return parameters.get("smv_skipped"), parameters.get("smv_blend"), parameters.get("tfi_coarse_share")

    assert said(mask) == (None, None, TFI_COARSE_SHARE)
    assert said(mask, background_removed=True) == ("the field is a local field", None, None)
    # a slab: the ellipsoid's columns drawn out to both ends of the field of view along B0 (the four slices
    # within 6 mm of each face hold 8 of 26 slices' voxels); then stopped three slices short of either end
    slab = np.broadcast_to(mask.any(axis=2, keepdims=True), mask.shape).copy()
    assert said(slab) == (None, "fine detail only, faded in from 0 to 12 mm from the faces where the field of "
                                "view cuts the mask (31 % of it lies within 6 mm of them)", 1.0)
    # a thicker slab, 8 % of it near the cut faces: a slab still
    thick = np.concatenate([slab] * 4, axis=2)
    thick_field = np.concatenate([field] * 4, axis=2)
    parameters = tfi(thick_field, thick, voxel, b0_direction=(0, 0, 1), b0_tesla=3.0, max_iterations=2).parameters
    assert parameters["smv_blend"].endswith("(8 % of it lies within 6 mm of them)")
    assert parameters["bregman_gain"] == 0.0 and "bregman_iterations" not in parameters
    slab[:, :, :3] = slab[:, :, -3:] = False
    assert said(slab) == (None, None, TFI_COARSE_SHARE)
    # a brainstem cut off by the field of view: a few voxels near the face
    stem = mask.copy()
    stem[13:16, 13:16, :13] = True
    assert said(stem) == (None, None, TFI_COARSE_SHARE)
    # a crop cut across B0: the ellipsoid drawn out to both ends of the first axis (8 of its 30 slices near a face)
    crop = np.broadcast_to(mask.any(axis=0, keepdims=True), mask.shape)
    assert said(crop)[1].endswith("(27 % of it lies within 6 mm of them)")
    thin = mask.copy()
    thin[:, :, :12] = thin[:, :, 15:] = False  # three slices, 4.5 mm: no voxel 6 mm inside
    assert said(thin) == ("no voxel lies 6 mm inside the mask", None, None)


def test_on_a_slab_sstv_gives_only_its_fine_detail_faded_in_from_the_cut_faces():
    """cut_face_fade: 0 within CUT_FACE_FADE[0] SMV radii of a flagged face, rising to 1 at CUT_FACE_FADE[1];
    blend_estimates with it keeps TFI's coarse part and takes SS-TV's share of the fine detail scaled by it."""
    shape, voxel, radius = (12, 10, 64), (1.0, 1.0, 0.5), 4.0
    extent = (slice(2, 10), slice(0, 10), slice(0, 64))
    fade = cut_face_fade(shape, extent, [[False, False], [False, False], [True, True]], radius, voxel)
    near, far = (radius * multiple for multiple in CUT_FACE_FADE)

    def ramp_of(depth_mm):
        return np.clip((depth_mm - near) / (far - near), 0, 1)

    expected = ramp_of(np.minimum(np.arange(64), 63 - np.arange(64)) * 0.5)
    assert np.allclose(fade, expected[None, None, :], atol=1e-6) and fade.max() == 1 and fade.min() == 0
    # a face flagged on the first axis too (its box starts at 2): the nearer face counts
    both = cut_face_fade(shape, extent, [[True, False], [False, False], [True, True]], radius, voxel)
    assert np.allclose(both, np.minimum(fade, ramp_of(np.abs(np.arange(12) - 2.0))[:, None, None]), atol=1e-6)
    assert np.all(cut_face_fade(shape, extent, [[False, False]] * 3, radius, voxel) == 1)

    rng = np.random.default_rng(3)
    valid = np.ones((24, 24, 64), dtype=bool)
    tfi_chi = rng.normal(0, 0.02, valid.shape).astype(np.float32)
    detail = np.zeros(valid.shape, dtype=np.float32)
    detail[::2] = 0.004  # a difference at the finest scale: SS-TV's share of it, scaled by the weight
    # ... on top of a constant difference, which is all coarse: TFI keeps it
    sstv_chi = tfi_chi + np.float32(0.01) + detail
    weight = np.broadcast_to(fade[:1, :1], valid.shape).astype(np.float32)
    blend, parameters = blend_estimates(tfi_chi, sstv_chi, valid, (1.0, 1.0, 0.5), weight)
    assert parameters["tfi_coarse_share"] == 1.0
    share = parameters["tfi_share"]
    change = blend - tfi_chi
    none, full = expected == 0, expected == 1
    assert none.sum() >= 2 and full.sum() >= 16
    assert np.all(change[:, :, none] == 0)  # at the faces
    # where the weight is 1: SS-TV's share of the fine detail (the rows alternate by 0.004 ppm), none of the offset
    middle = change[6:-6, 6:-6][:, :, full]
    assert np.allclose(middle[::2] - middle[1::2], (1 - share) * 0.004, atol=1e-4)
    assert abs(float(np.mean(middle))) < 1e-4
    # between: in proportion to the weight
    ramp = ~none & ~full
    assert np.allclose(change[6:-6:2, 6:-6][:, :, ramp] - change[7:-5:2, 6:-6][:, :, ramp],
                       (1 - share) * 0.004 * expected[ramp], atol=1e-4)
    # the whole heads' blend takes SS-TV's coarse part too
    whole_heads = blend_estimates(tfi_chi, sstv_chi, valid, (1.0, 1.0, 0.5))[0] - tfi_chi
    assert abs(float(np.mean(whole_heads[6:-6, 6:-6][:, :, full])) - (1 - TFI_COARSE_SHARE) * 0.012) < 2e-4


def test_sstv_sees_through_any_field_harmonic_in_the_mask():
    """SS-TV's data are the SMV-filtered field on voxels whose ball lies in the mask, where a background field
    (harmonic there: a gradient and an outside source's dipole field) vanishes: chi does not change."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, truth, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    grid = np.indices(mask.shape, dtype=np.float32)
    offset = [grid[a] * voxel[a] - [-8.0, 50.0, -12.0][a] - mask.shape[a] * voxel[a] / 2 for a in range(3)]
    distance_squared = sum(o * o for o in offset)
    # the field of a point source 50 mm off the brain's centre, plus a linear gradient: harmonic in the mask
    background = 4e5 * (3 * offset[2] ** 2 / distance_squared - 1) / distance_squared**1.5 + 4.0 * grid[2]
    assert np.abs(background[mask]).max() > 2 * np.abs(field[mask]).max()
    sstv = METHODS["sstv"]
    settings = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude, regularization=3e-5)
    plain = sstv(field, mask, voxel, **settings)
    seen_through = sstv(field + background.astype(np.float32), mask, voxel, **settings)
    assert plain.parameters["radius_mm"] == 6.0 and plain.parameters["iterations"] > 5
    assert nrmse(seen_through.chi_ppm, plain.chi_ppm, plain.mask) < 0.01  # measured 0.0014 %: float32 rounding
    assert nrmse(plain.chi_ppm, truth, plain.mask) < 19.5  # measured 17.6 %
    thin = mask.copy()
    thin[:, :, :12] = thin[:, :, 15:] = False  # three slices, 4.5 mm: no voxel 6 mm inside
    with pytest.raises(QSMInputError, match="no voxel lies 6 mm inside the mask.*smaller radius_mm"):
        sstv(field, thin, voxel, **settings)


@pytest.mark.parametrize("cut", [False, True])
def test_sstv_needs_no_padding_even_where_the_field_of_view_cuts_the_mask(cut):
    """The field of the frame's periodic copies is harmonic in every ball of SS-TV's data, so padding the frame
    changes nothing, provided the frame leaves the ball's margin beyond a face where the field of view cuts
    the mask (a slab): the default (no padding) gives the chi of a frame padded 1.5 times, whole or cut."""
    voxel = (1.5, 1.5, 1.5)
    field, mask, _, magnitude = _blobs(voxel, (0, 0, 1), shape=(30, 28, 26), supersample=1)
    if cut:  # the mask spans slices 3-22: cropped to 7-18 it fills the first and last slice
        field, mask, magnitude = field[:, :, 7:19], mask[:, :, 7:19], magnitude[..., 7:19]
        assert mask[:, :, 0].any() and mask[:, :, -1].any()
    settings = dict(b0_direction=(0, 0, 1), b0_tesla=3.0, magnitude=magnitude, regularization=3e-5, tolerance=0,
                    max_iterations=20)
    default = METHODS["sstv"](field, mask, voxel, **settings)
    padded = METHODS["sstv"](field, mask, voxel, pad_factor=1.5, **settings)
    # measured 0.15 % (whole) and 0.29 % (cut); without the margin beyond the cut faces 127 %
    assert nrmse(default.chi_ppm, padded.chi_ppm, default.mask) < 0.5


def test_medi_plus_zero_without_magnitude_is_refused(oblique_blobs):
    voxel, b0, field, mask, _, _ = oblique_blobs
    with pytest.raises(QSMInputError, match="magnitude"):
        _run("medi", field, mask, voxel, b0, csf_regularization=100.0)


@pytest.fixture(scope="module")
def corrupted_blobs(oblique_blobs):
    """The oblique blobs with a block of voxels whose field is 40 Hz off."""
    voxel, b0, field, mask, truth, _ = oblique_blobs
    bad = np.zeros_like(mask)
    bad[18:22, 15:19, 12:16] = True
    bad &= mask
    corrupted = np.where(bad, field + np.float32(40.0), field).astype(np.float32)
    return voxel, b0, corrupted, mask, truth, bad


@pytest.mark.parametrize("method, params", [("tv", {}), ("nltv", {}), ("medi", {"merit": False})])
def test_field_weight_of_zero_silences_corrupted_voxels(corrupted_blobs, method, params):
    voxel, b0, corrupted, mask, truth, bad = corrupted_blobs
    weight = np.where(bad, 0.0, 1.0).astype(np.float32)
    weighted = nrmse(_run(method, corrupted, mask, voxel, b0, field_weight=weight, **params), truth, mask & ~bad)
    unweighted = nrmse(_run(method, corrupted, mask, voxel, b0, **params), truth, mask & ~bad)
    assert weighted < 0.5 * unweighted


def test_merit_finds_the_corrupted_voxels_by_itself(corrupted_blobs):
    voxel, b0, corrupted, mask, truth, bad = corrupted_blobs
    with_merit = nrmse(_run("medi", corrupted, mask, voxel, b0), truth, mask & ~bad)
    without = nrmse(_run("medi", corrupted, mask, voxel, b0, merit=False), truth, mask & ~bad)
    assert with_merit < 0.5 * without


@pytest.fixture(scope="module")
def head_2mm():
    phantom = simulate_head(voxel_size_mm=(2.0, 2.0, 2.0), snr=None, supersample=1)
    return phantom.local_field_hz, phantom.brain_mask, phantom.acquisition


@pytest.mark.parametrize("method", ITERATIVE)
def test_progress_is_monotonic_and_cancel_is_honoured_at_the_next_iteration(head_2mm, method):
    field, mask, acq = head_2mm
    reports = []
    _run(method, field, mask, acq.voxel_size_mm, acq.b0_direction, acq.magnitude,
         progress=lambda fraction, message: reports.append((fraction, message)), **QUICK[method])
    fractions = [f for f, _ in reports]
    assert len(reports) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 and isinstance(m, str) and m for f, m in reports)

    # Cancel is requested at the second progress report; a method that checks it every iteration stops
    # before reporting again. Counting reports instead of seconds keeps the test independent of load
    # (benchmarks/bench_inversion.py --cancel measures the latency in seconds).
    after_request = []
    cancel = threading.Event()

    def progress(fraction: float, message: str) -> None:
        if cancel.is_set():
            after_request.append(fraction)
        elif fraction > 0:
            cancel.set()

    with pytest.raises(QSMCancelled):
        _run(method, field, mask, acq.voxel_size_mm, acq.b0_direction, acq.magnitude, cancel=cancel,
             progress=progress, **{"max_iterations": 200, "tolerance": 0.0})
    assert len(after_request) <= 1


@pytest.mark.parametrize("shape", [(19, 12, 10), (3, 5, 4)])
def test_slab_by_slab_operators_equal_the_whole_volume_ones(shape, monkeypatch):
    """The cache-friendly numpy paths of the ADMM steps give exactly what the whole-volume operators give."""
    import QSMLib._parallel as parallel
    from QSMLib._operators import difference_adjoint, gradient, gradient_adjoint, gradient_rows, shrink
    from QSMLib._threads import limit_threads
    from QSMLib.inversion.tv import admm_data_step, admm_gradient_step, relative_change

    monkeypatch.setattr(parallel, "_SLAB_VOXELS", 2 * shape[1] * shape[2])  # several slabs, a short last one
    rng = np.random.default_rng(3)
    voxel = (0.9, 1.1, 1.7)
    chi = rng.standard_normal(shape).astype(np.float32)
    first, second = (rng.standard_normal((3, *shape)).astype(np.float32) for _ in range(2))
    whole = gradient(chi, voxel)
    for rows in (slice(0, 2), slice(shape[0] - 2, shape[0]), slice(0, shape[0])):
        np.testing.assert_array_equal(gradient_rows(chi, voxel, rows), whole[:, rows])
    np.testing.assert_array_equal(difference_adjoint(first, second, voxel, np.empty(shape, np.float32), None),
                                  gradient_adjoint(first - second, voxel))
    for threshold in (0.3, rng.random(shape).astype(np.float32)):
        z, w = first.copy(), second.copy()
        admm_gradient_step(chi, z, w, None, threshold, None, voxel)
        expected_w = second + whole
        expected_z = expected_w.copy()
        shrink(expected_z, threshold, np.empty(shape, np.float32))
        np.testing.assert_array_equal(z, expected_z)
        np.testing.assert_array_equal(w, expected_w - expected_z)
    # the data split and dual: the same per-voxel operations as on the whole volume
    u, y = first[0].copy(), np.empty(shape, np.float32)
    field_of_chi, weighted_field, inverse = second[0], second[1], rng.random(shape).astype(np.float32)
    admm_data_step(u, y, field_of_chi, weighted_field, inverse, 0.1)
    expected_y = (first[0] + field_of_chi) * np.float32(0.1)
    expected_y += weighted_field
    expected_y *= inverse
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(u, first[0] + field_of_chi - expected_y)
    # the stopping rule's relative change: the same value on one thread as on two, close to the whole-volume one
    region = rng.random(shape) < 0.6
    with limit_threads(1):
        one_thread = relative_change(chi, first[0], region)
    with limit_threads(2):
        two_threads = relative_change(chi, first[0], region)
    whole_change = np.linalg.norm((chi - first[0])[region].astype(np.float64)) / np.linalg.norm(chi[region])
    assert one_thread == two_threads and abs(one_thread / whole_change - 1) < 1e-6


@pytest.mark.parametrize("leading", [(), (2,)])
def test_threaded_gaussian_smoothing_equals_scipys_to_the_last_bit(leading, monkeypatch):
    """The slab-parallel separable smoothing (the TFI/SS-TV blend's) gives exactly
    ``scipy.ndimage.gaussian_filter`` with zeros beyond the faces, per 3D volume, on one thread or two; a
    smoothed mask handed back to :func:`masked_smoothing` is returned, not computed again."""
    from scipy import ndimage

    import QSMLib._parallel as parallel
    from QSMLib._operators import gaussian_smoothing, masked_smoothing
    from QSMLib._threads import limit_threads

    shape = (17, 13, 11)
    monkeypatch.setattr(parallel, "_SLAB_VOXELS", 3 * shape[1] * shape[2])  # several slabs, a short last one
    rng = np.random.default_rng(5)
    volume = rng.standard_normal((*leading, *shape)).astype(np.float32)
    sigma = (2.5, 0.0, 1.2)  # one axis left alone, and a kernel wider than the array along axis 2
    expected = ndimage.gaussian_filter(volume, [0.0] * len(leading) + list(sigma), mode="constant")
    for threads in (1, 2):
        with limit_threads(threads):
            np.testing.assert_array_equal(gaussian_smoothing(volume, sigma), expected)
    assert volume.dtype == expected.dtype and np.abs(expected).max() > 0.1
    mask = rng.random(shape) < 0.5
    values, weight = masked_smoothing(volume, mask, 2.0, (0.8, 1.0, 1.6))
    assert weight.max() > 0.1
    again, same = masked_smoothing(volume, mask, 2.0, (0.8, 1.0, 1.6), smoothed_mask=weight)
    assert same is weight
    np.testing.assert_array_equal(again, values)
