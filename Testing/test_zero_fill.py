"""Zero-filling (QSMLib.zero_fill): the solving grid, band-limited resampling both ways, the pipeline's use."""

import warnings

import numpy as np
import pytest

from QSMLib import metrics
from QSMLib.acquisition import MultiEchoGRE
from QSMLib.errors import QSMInputError, QSMWarning
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PRESETS, PipelineConfig, run_pipeline
from QSMLib.zero_fill import (
    MAX_VOXEL_GROWTH,
    RINGING_THRESHOLD,
    auto_solve_voxel_mm,
    band_limited_back,
    cut_axes,
    fourier_resample,
    nearest_samples,
    nearest_upsampled,
    ringing_excess,
    solving_shape,
    zero_filled_acquisition,
)


def _band_limited_volume(shape, keep=4, seed=0):
    """A smooth random complex volume: only the lowest ``keep`` frequencies per axis are non-zero."""
    rng = np.random.default_rng(seed)
    spectrum = np.zeros(shape, complex)
    index = tuple(slice(0, keep) for _ in shape)
    spectrum[index] = rng.normal(size=(keep,) * 3) + 1j * rng.normal(size=(keep,) * 3)
    return np.fft.ifftn(spectrum)


@pytest.mark.parametrize("shape, voxel, target, expected", [
    ((96, 112, 88), (2.0, 2.0, 2.0), 1.0, (192, 224, 176)),
    ((128, 150, 118), (1.5, 1.5, 1.5), 1.0, (192, 225, 177)),
    ((192, 224, 88), (1.0, 1.0, 2.0), 1.0, (192, 224, 176)),
    ((160, 190, 150), (1.2, 1.2, 1.2), 1.0, (160, 190, 150)),  # within 1.25 times the target: kept
    ((64, 80, 60), (3.0, 3.0, 3.0), 1.0, (64, 80, 60)),  # 27 times the voxels: over the growth limit
    ((64, 80, 60), (3.0, 3.0, 3.0), 1.5, (128, 160, 120)),
    ((96, 112, 88), (2.0, 2.0, 2.0), None, (96, 112, 88)),
])
def test_the_solving_grid_refines_coarse_axes_within_the_growth_limit(shape, voxel, target, expected):
    fine = solving_shape(shape, voxel, target)
    assert fine == expected
    assert np.prod(fine) <= MAX_VOXEL_GROWTH * np.prod(shape)


@pytest.mark.parametrize("shape, fine", [((16, 12, 10), (32, 24, 20)), ((15, 12, 10), (23, 18, 15))])
def test_band_limited_data_survive_the_round_trip_and_keep_their_samples(shape, fine):
    volume = _band_limited_volume(shape)
    refined = fourier_resample(volume, fine)
    assert refined.shape == fine and np.iscomplexobj(refined)
    np.testing.assert_allclose(fourier_resample(refined, shape), volume, atol=1e-12)
    if all(m == 2 * n for n, m in zip(shape, fine)):
        # the fine grid's even voxels are the scan's voxels, unchanged
        np.testing.assert_allclose(refined[::2, ::2, ::2], volume, atol=1e-12)
        np.testing.assert_allclose(nearest_samples(refined, shape), volume, atol=1e-12)
    mask = np.random.default_rng(1).random(shape) > 0.5
    assert np.array_equal(nearest_samples(nearest_upsampled(mask, fine), shape), mask)


def test_the_zero_filled_acquisition_keeps_the_field_of_view_the_phase_and_the_excluded_voxels():
    shape, echo_times = (20, 24, 16), (0.004, 0.008)
    magnitude = np.abs(_band_limited_volume(shape, seed=3)) * 100 + 1
    ramp = 0.3 * np.sin(2 * np.pi * np.arange(shape[0]) / shape[0])[:, None, None] * np.ones(shape)
    phase = np.stack([ramp * (1 + k) for k in range(2)])
    magnitude = np.stack([magnitude * np.exp(-k) for k in range(2)]).astype(np.float32)
    magnitude[:, 3, 4, 5] = np.nan  # an invalid voxel
    affine = np.array([[1.5, 0, 0, -10.0], [0, 1.5, 0, 5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
    with pytest.warns(QSMWarning, match="NaN or infinite"):
        scan = MultiEchoGRE(magnitude, phase.astype(np.float32), echo_times, 3.0, affine=affine, phase_sign=-1,
                            bipolar=False)
    fine = zero_filled_acquisition(scan, (30, 36, 32))
    assert fine.spatial_shape == (30, 36, 32)
    np.testing.assert_allclose(fine.voxel_size_mm, (1.0, 1.0, 1.0))
    # fine voxel (3, 6, 4) lies at scan index (2, 4, 2): the same point in the world
    np.testing.assert_allclose(fine.affine @ [3, 6, 4, 1], affine @ [2, 4, 2, 1])
    assert fine.echo_times_s == echo_times and fine.phase_sign == -1 and fine.bipolar is False
    assert fine.b0_direction == scan.b0_direction
    assert fine.invalid_voxels[4:6, 6, 10].all() and fine.invalid_voxels.sum() == 2
    assert np.all(fine.magnitude[:, fine.invalid_voxels] == 0)
    # a smooth phase is interpolated, not wrapped or scaled
    line = fine.phase[1, :, 18, 24]
    expected = 2 * 0.3 * np.sin(2 * np.pi * np.arange(30) / 30)
    assert np.max(np.abs(line - expected)) < 0.02


def test_a_map_brought_back_keeps_a_constant_and_does_not_ring_at_the_mask_edge():
    fine_shape, voxel = (40, 40, 40), (1.0, 1.0, 1.0)
    grid = np.indices(fine_shape) - 19.5
    mask = (grid ** 2).sum(axis=0) < 14 ** 2
    back = band_limited_back(np.where(mask, 0.05, 0).astype(np.float32), mask, voxel, (20, 20, 20))
    coarse_mask = nearest_samples(mask, (20, 20, 20))
    assert back.dtype == np.float32
    assert np.max(np.abs(back[coarse_mask] - 0.05)) < 1e-6
    # the same map cropped without the continuation rings at the edge
    ringing = fourier_resample(np.where(mask, 0.05, 0.0), (20, 20, 20))
    assert np.max(np.abs(ringing[coarse_mask] - 0.05)) > 0.005


def _chi_nrmse(result, case):
    region = result.local_mask & case.brain_mask
    return metrics.nrmse(result.chi_ppm, case.chi_ppm, region), region


def test_a_coarse_band_limited_scan_is_solved_on_the_zero_filled_grid_by_default_and_reported_on_its_own_grid(
        suite_case):
    # a qsm-forward head recorded as a scanner records it (its 1.5 mm model cropped in k-space to 3 mm): the default
    # ("auto") zero-fills it to 1.5 mm voxels (1 mm would be 27 times the voxels, over the growth limit)
    case = suite_case("small_qsmforward_kspace")
    default = PRESETS["consensus"]()
    assert default.zero_fill_mm == "auto" and auto_solve_voxel_mm(case.acquisition.voxel_size_mm) == 1.5
    scan_grid = PipelineConfig.from_dict({"zero_fill_mm": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QSMWarning)
        plain = run_pipeline(case.acquisition, scan_grid)
        result = run_pipeline(case.acquisition, default, labels=case.labels, label_names=case.label_names)
    shape = case.acquisition.spatial_shape
    for name in ("chi_ppm", "mask", "local_mask", "local_field_hz", "total_field_hz"):
        assert getattr(result, name).shape == shape, name
    assert result.unwrapped_phase.shape == (case.acquisition.n_echoes, *shape)
    assert all(value.shape[-3:] == shape for value in result.maps.values())
    assert result.chi_ppm.dtype == np.float32 and result.local_mask.dtype == bool
    assert not result.chi_ppm[~result.local_mask].any()
    chosen = result.parameters["zero_fill"]
    assert chosen["setting"] == "auto" and chosen["ringing"]["band_limited"] is True
    assert chosen["solving_shape"] == [2 * n for n in shape] and chosen["solving_voxel_size_mm"] == [1.5] * 3
    assert "zero_fill" not in plain.parameters
    assert result.roi and {row["label"] for row in result.roi} <= set(np.unique(case.labels).tolist())
    # measured 54.16 % on the scan's grid, 39.68 % zero-filled to 1.5 mm
    plain_nrmse, _ = _chi_nrmse(plain, case)
    refined_nrmse, region = _chi_nrmse(result, case)
    assert plain_nrmse > 53.0 and refined_nrmse < 40.5
    assert region.sum() > 0.9 * case.brain_mask.sum()
    # on the voxels both runs report, too
    common = plain.local_mask & result.local_mask & case.brain_mask
    assert metrics.nrmse(result.chi_ppm, case.chi_ppm, common) < metrics.nrmse(plain.chi_ppm, case.chi_ppm, common) - 10


def test_a_coarse_scan_whose_data_are_not_band_limited_keeps_its_grid_and_its_result(suite_case):
    # chi sampled on the 3 mm output grid and simulated there (as QSM-CI makes its heads): no ringing, the scan's
    # grid, and the same map as with zero-filling off
    case = suite_case("small_qsmforward")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QSMWarning)
        automatic = run_pipeline(case.acquisition, PRESETS["consensus"]())
        off = run_pipeline(case.acquisition, PipelineConfig.from_dict({"zero_fill_mm": None}))
    chosen = automatic.parameters["zero_fill"]
    assert chosen["ringing"]["band_limited"] is False and "scan's grid" in chosen["reason"]
    assert "solving_shape" not in chosen
    assert np.array_equal(automatic.chi_ppm, off.chi_ppm) and np.array_equal(automatic.local_mask, off.local_mask)


def test_auto_keeps_the_grid_of_a_band_limited_scan_for_an_inversion_whose_lambda_follows_the_grid(suite_case):
    # zero-filling was chosen with TFI, whose lambda follows the scan's voxels; with linear TV after iSMV "auto"
    # keeps the scan's grid and says why (a number still forces the finer grid: solving_voxel_mm's examples)
    case = suite_case("small_qsmforward_kspace")

    def with_tv(zero_fill_mm):
        config = PRESETS["consensus"]().to_dict()
        config.update(inversion={"method": "tv", "params": {}}, zero_fill_mm=zero_fill_mm)
        return PipelineConfig.from_dict(config)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QSMWarning)
        automatic = run_pipeline(case.acquisition, with_tv("auto"))
        off = run_pipeline(case.acquisition, with_tv(None))
    chosen = automatic.parameters["zero_fill"]
    assert chosen["setting"] == "auto" and "only for the tfi inversion" in chosen["reason"]
    assert "tv's" in chosen["reason"]
    assert "ringing" not in chosen and "solving_shape" not in chosen and "zero_fill" not in automatic.timings_s
    assert np.array_equal(automatic.chi_ppm, off.chi_ppm) and np.array_equal(automatic.local_mask, off.local_mask)


def test_the_ringing_of_an_image_recorded_in_k_space_is_told_from_noise(suite_case):
    recorded = ringing_excess(suite_case("small_qsmforward_kspace").acquisition.magnitude[0])
    sampled = ringing_excess(suite_case("small_qsmforward").acquisition.magnitude[0])
    # measured 2.08e-4 (its standard error 3e-6) and 1.7e-6 (1.9e-6)
    assert recorded["band_limited"] is True and recorded["excess"] > 4 * RINGING_THRESHOLD
    assert sampled["band_limited"] is False and abs(sampled["excess"]) < 0.25 * RINGING_THRESHOLD
    # the project's phantom (box averages of a finer grid) at 2 mm, axial and on a grid tilted by 20 degrees:
    # measured 7.1e-7 and 1.28e-5
    for tilt in (0.0, 20.0):
        phantom = simulate_head(voxel_size_mm=(2.0,) * 3, acquisition_tilt_deg=tilt, snr=100.0, seed=1)
        boxed = ringing_excess(phantom.acquisition.magnitude[0])
        assert boxed["band_limited"] is False and boxed["excess"] < 0.5 * RINGING_THRESHOLD
    # a crop inside the head has no air to judge by
    assert ringing_excess(suite_case("small_axial").acquisition.magnitude[0])["band_limited"] is not True


def test_a_users_mask_bounds_a_zero_filled_run_as_it_bounds_a_plain_one(suite_case):
    case = suite_case("small_qsmforward_kspace")
    user_mask = case.brain_mask.copy()
    user_mask[:, :, : user_mask.shape[2] // 2] = False  # the upper half of the brain only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QSMWarning)
        result = run_pipeline(case.acquisition, PipelineConfig.from_dict({"zero_fill_mm": 2.0}), mask=user_mask)
    assert result.parameters["zero_fill"]["solving_voxel_size_mm"] != [3.0] * 3
    assert np.array_equal(result.mask, user_mask & ~case.acquisition.invalid_voxels)
    assert not (result.local_mask & ~user_mask).any() and not result.chi_ppm[~user_mask].any()
    assert result.local_mask.sum() > 0.8 * user_mask.sum()


def test_axes_that_the_field_of_view_cuts_at_both_ends_are_not_zero_filled(suite_case):
    # a crop cut on every side (its spectrum would ring from face to face) and a whole head (air beyond it)
    crop = suite_case("small_axial").acquisition
    head = suite_case("small_qsmforward_kspace").acquisition
    assert cut_axes(crop.magnitude[0]) == (True, True, True)
    assert cut_axes(head.magnitude[0]) == (False, False, False)
    slab = head.magnitude[0][:, :, 20:44]
    assert cut_axes(slab) == (False, False, True)
    assert solving_shape(slab.shape, (3.0, 3.0, 3.0), 1.5, keep_axes=cut_axes(slab)) == (128, 160, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QSMWarning)
        result = run_pipeline(crop, PipelineConfig.from_dict({"zero_fill_mm": 1.5}))
    assert "zero_fill" not in result.parameters


@pytest.mark.parametrize("value", [0, -1.0, 0.1, 11, "1", "Auto", True, [1.0]])
def test_a_zero_fill_voxel_size_that_is_not_one_is_refused(value):
    with pytest.raises(QSMInputError, match='zero_fill_mm must be "auto", a voxel size in mm from 0.2 to 10, or null'):
        PipelineConfig.from_dict({"zero_fill_mm": value})


def test_the_zero_fill_voxel_size_round_trips_through_json():
    config = PipelineConfig.from_dict({"zero_fill_mm": 1})
    assert PipelineConfig.from_json(config.to_json()) == config and config.zero_fill_mm == 1
    assert PipelineConfig.from_json(PRESETS["consensus"]().to_json()).zero_fill_mm == "auto"
    assert PipelineConfig.from_json(PRESETS["fast"]().to_json()).zero_fill_mm is None
