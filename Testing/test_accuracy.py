"""Whole-pipeline accuracy on the head phantom (raw phase to chi), default preset.

The phantom's field is simulated on a twice finer grid and averaged down,
so these numbers are free of the inverse crime. Metrics are computed inside
the brain where the pipeline returns chi (QSM challenge 2.0 conventions).
"""

import numpy as np
import pytest

from QSMLib import metrics
from QSMLib.acquisition import MultiEchoGRE
from QSMLib.phantom import DEEP_GREY_MATTER, simulate_head
from QSMLib.pipeline import load_config, run_pipeline, run_pipeline_from_field

VOXEL_MM = 2.0
# Bounds a little above what the consensus preset (total field inversion blended with the
# single-step SMV solve, automatic lambda, the magnitude's edges free of the prior, MERIT)
# measures at 2 mm, seed 1: chi NRMSE 16.0 %, correlation 0.988, local field (the field of
# the tissue chi) NRMSE 11.6 %, deep grey matter within 2.50 ppb (the dentate) since stop 49
# (TFI's Bregman step); 16.2 %, 0.987, 11.6 % and 2.05 ppb since stop 46 (TFI's lambda
# 1.3x linear TV's rule and 0.05 of the magnitude's edges at 2 mm, chosen on a suite with
# in-vivo-like texture); 15.3 %, 0.989, 11.5 % and 1.4 ppb at stop 39 (TFI's lambda 1.8x
# linear TV's rule and, at 2 mm, 0.1 of the magnitude's gradient components as edges, a
# share this phantom, whose magnitude edges are its chi edges, likes less than the realistic
# suite does; with 0.15: 14.2 %, 0.990, 11.4 %, 1.9 ppb; stop 38, 1.5x, TFI's second-pass
# solve running, its first pass to twice the tolerance: 14.8 %, 11.6 %, 2.1 ppb; stop 37,
# its second pass with
# chi's own edges: 14.8 %, 11.8 %, 1.7 ppb; stop 33, the blend by detail scale: 15.2 %,
# 12.2 %, 3.5 ppb; with one share of 0.4: 15.6 %, 12.9 %, 3.1 ppb). TFI alone (smv_radius_mm
# 0): 21.1 %, 0.978, 17.5 % and 4.1 ppb; without MERIT: 28.7 %, 0.958, 20.4 % and 3.5 ppb;
# before TFI left the magnitude's edges free: 47.4 %, 0.885, 35.9 % and 8.2 ppb.
# This phantom is piecewise constant with magnitude edges on the chi edges, the ideal
# case for an edge prior; the defaults were chosen on the realistic validation suite
# instead (README, "Measured accuracy").
LOCAL_FIELD_NRMSE_MAX = 12.0
CHI_NRMSE_MAX = 16.7
CHI_CORRELATION_MIN = 0.985
ROI_ERROR_MAX_PPB = 2.7
# Head tilt (oblique_deg, B0 oblique to the anatomy: different physics) measures
# 18.38 % (ROI within 2.34 ppb); oblique slices (acquisition_tilt_deg, same physics on a
# grid tilted by 20 degrees) 21.22 % (3.27 ppb) since stop 49; 19.45 % (3.15) and 21.98 %
# (2.56) since stop 46; 18.7 % (2.8) and 21.1 % (2.9)
# at stop 39 (18.3 % (3.3) and 19.5 % (2.9)
# with 0.15 of the magnitude's edges); 19.0 % (3.1) and 20.4 % (3.2)
# at stop 38; 19.4 % (3.8) and 20.3 % (4.4) at
# stop 37; 19.5 % (6.3) and 20.1 % (5.7)
# at stop 33, 20.1 % (6.2) and 20.5 % (6.0) at stop 32.
# Both fields were simulated on a finer grid, so TFI models them with the even dipole
# kernel (stop 30); with the sampled kernel, as
# before: 18.3 % (12.2 ppb) and 18.9 % (14.2 ppb). On this piecewise
# constant phantom the even kernel costs 1.6-1.8 points and halves the ROI errors; on the
# realistic suite's five such heads it lowered both. TFI alone, sampled kernel: 25.8 %
# (15.7 ppb) and 27.8 % (15.4 ppb); without MERIT 28.9 % and 32.3 %. The geometries are
# bounded on their own measurements rather than by a slack over the axial result. From
# the true local field (the single-step solve is not used on a local field; TFI told the
# background is removed, i.e. linear TV with MERIT): 15.5 % axial, 16.0 % head tilt,
# 17.4 % oblique slices since stop 38 (16.5, 17.4 and 18.6 % before its second pass ran).
OBLIQUE_ROI_ERROR_MAX_PPB = 3.5
OBLIQUE_NRMSE_MAX = 18.9
OBLIQUE_DIPOLE_NRMSE_SLACK = 2.0
TILTED_NRMSE_MAX = 21.7
TILTED_CORRELATION_SLACK = 0.03


def _evaluate(oblique_deg):
    phantom = simulate_head(voxel_size_mm=(VOXEL_MM,) * 3, oblique_deg=oblique_deg, snr=100.0, seed=1)
    return _score(phantom)


def _evaluate_tilted(acquisition_tilt_deg):
    # oblique slices: the same head and B0 as the axial phantom, on a rotated grid
    phantom = simulate_head(
        voxel_size_mm=(VOXEL_MM,) * 3, acquisition_tilt_deg=acquisition_tilt_deg, snr=100.0, seed=1
    )
    return _score(phantom)


def _score(phantom):
    result = run_pipeline(phantom.acquisition, load_config("consensus"))
    region = result.local_mask & phantom.brain_mask
    deep_grey = {k: v for k, v in phantom.label_names.items() if v in DEEP_GREY_MATTER}
    return {
        "phantom": phantom,
        "result": result,
        "coverage": region.sum() / phantom.brain_mask.sum(),
        "outside": (result.local_mask & ~phantom.brain_mask).sum() / result.local_mask.sum(),
        "local_nrmse": metrics.nrmse(result.local_field_hz, phantom.local_field_hz, region),
        "chi": metrics.summary(result.chi_ppm, phantom.chi_ppm, region),
        "roi_errors_ppb": metrics.roi_mean_errors_ppb(result.chi_ppm, phantom.chi_ppm, phantom.labels, deep_grey,
                                                      region),
    }


@pytest.fixture(scope="module")
def axial():
    return _evaluate(0.0)


@pytest.fixture(scope="module")
def oblique():
    return _evaluate(20.0)


@pytest.fixture(scope="module")
def tilted():
    return _evaluate_tilted(20.0)


def test_default_pipeline_recovers_the_phantom(axial):
    # The mask covers the brain and little else.
    assert axial["coverage"] > 0.85 and axial["outside"] < 0.05
    assert axial["local_nrmse"] < LOCAL_FIELD_NRMSE_MAX
    assert axial["chi"]["nrmse"] < CHI_NRMSE_MAX
    assert axial["chi"]["correlation"] > CHI_CORRELATION_MIN
    errors = np.abs(list(axial["roi_errors_ppb"].values()))
    assert len(errors) == len(DEEP_GREY_MATTER)
    assert errors.max() < ROI_ERROR_MAX_PPB, axial["roi_errors_ppb"]


def _dipole_only_nrmse(evaluation):
    phantom = evaluation["phantom"]
    acquisition = phantom.acquisition
    result = run_pipeline_from_field(
        phantom.local_field_hz, phantom.brain_mask, field_kind="local", voxel_size_mm=acquisition.voxel_size_mm,
        b0_direction=acquisition.b0_direction, b0_tesla=acquisition.b0_tesla, config=load_config("consensus"))
    return metrics.nrmse(result.chi_ppm, phantom.chi_ppm, phantom.brain_mask)


def test_oblique_acquisition_is_nearly_as_accurate_as_axial(axial, oblique):
    assert np.linalg.norm(oblique["phantom"].acquisition.b0_direction - np.array([0, 0, 1])) > 0.3
    assert oblique["chi"]["nrmse"] < OBLIQUE_NRMSE_MAX
    assert oblique["chi"]["correlation"] > axial["chi"]["correlation"] - 0.03
    errors = np.abs(list(oblique["roi_errors_ppb"].values()))
    assert errors.max() < OBLIQUE_ROI_ERROR_MAX_PPB, oblique["roi_errors_ppb"]
    assert _dipole_only_nrmse(oblique) < _dipole_only_nrmse(axial) + OBLIQUE_DIPOLE_NRMSE_SLACK


def test_ignoring_the_oblique_b0_is_measurably_worse(oblique):
    # The same oblique data reconstructed as if B0 were along the slice axis:
    # the geometry from the affine is what makes the oblique case accurate.
    from copy import deepcopy

    phantom = oblique["phantom"]
    acquisition = deepcopy(phantom.acquisition)
    acquisition.b0_direction = (0.0, 0.0, 1.0)
    wrong = run_pipeline(acquisition, load_config("consensus"))
    region = wrong.local_mask & phantom.brain_mask
    assert metrics.nrmse(wrong.chi_ppm, phantom.chi_ppm, region) > oblique["chi"]["nrmse"] + 10


def test_oblique_slices_are_as_accurate_as_axial(axial, tilted):
    # Same physics as the axial phantom, only the grid is rotated, so this isolates the
    # geometry handling (B0 from the affine): 21.2 % against 16.0 % axial.
    assert np.linalg.norm(tilted["phantom"].acquisition.b0_direction - np.array([0, 0, 1])) > 0.3
    assert tilted["coverage"] > 0.85 and tilted["outside"] < 0.05
    assert tilted["chi"]["nrmse"] < TILTED_NRMSE_MAX
    assert tilted["chi"]["correlation"] > axial["chi"]["correlation"] - TILTED_CORRELATION_SLACK
    errors = np.abs(list(tilted["roi_errors_ppb"].values()))
    assert len(errors) == len(DEEP_GREY_MATTER)
    assert errors.max() < OBLIQUE_ROI_ERROR_MAX_PPB, tilted["roi_errors_ppb"]


def _stored_as(acquisition, axes, flipped):
    """The same scan stored another way: spatial array axes in the order ``axes``, then reversed along ``flipped``.

    The affine follows, so every voxel keeps its place in the world (and B0 its direction there).
    """
    shape = acquisition.spatial_shape
    affine = np.eye(4)
    affine[:3, 3] = acquisition.affine[:3, 3]
    affine[:3, :3] = acquisition.affine[:3, list(axes)]
    order = [0, *(axis + 1 for axis in axes)]
    magnitude, phase = (np.transpose(values, order) for values in (acquisition.magnitude, acquisition.phase))
    for axis in flipped:
        affine[:3, 3] += affine[:3, axis] * (shape[axes[axis]] - 1)
        affine[:3, axis] *= -1
        magnitude, phase = np.flip(magnitude, axis + 1), np.flip(phase, axis + 1)
    return MultiEchoGRE(np.ascontiguousarray(magnitude), np.ascontiguousarray(phase), acquisition.echo_times_s,
                        acquisition.b0_tesla, affine=affine)


def _back_in_place(volume, axes, flipped):
    return np.transpose(np.flip(volume, flipped) if flipped else volume, np.argsort(axes))


@pytest.mark.parametrize("axes, flipped", [((1, 2, 0), ()), ((2, 0, 1), (1,))],
                         ids=["sagittal-like axis order", "axis order and a flip"])
def test_how_the_volume_is_stored_does_not_change_the_map(axial, axes, flipped):
    # A sagittal 3D GRE stores B0 along the second array axis; LPS/RAS writers flip axes. Every stage must
    # take its geometry from the affine. Measured: the axis order alone changes chi by 0.0008 % (relative
    # NRMSE; 0.064 % at stop 37, when the second pass's edges were a threshold on the first estimate of chi,
    # so that float rounding that differs between storages decided a few voxels at it; a ramp since); with a flip,
    # forward differences become backward ones (the TV prior, MERIT, the magnitude's edges), which moved chi
    # by 5-7 % relative and its NRMSE against the truth by +0.03..+0.14 point (15.18 -> 15.21-15.32 % in three
    # stored forms, worst ROI error 3.1-3.9 ppb; stop 35, before the second pass).
    phantom = axial["phantom"]
    stored = _stored_as(phantom.acquisition, axes, flipped)
    assert np.allclose(stored.b0_direction, np.array(phantom.acquisition.b0_direction)[list(axes)], atol=1e-6)
    result = run_pipeline(stored, load_config("consensus"))
    chi = _back_in_place(result.chi_ppm, axes, flipped)
    reported = _back_in_place(result.local_mask, axes, flipped)
    assert np.array_equal(reported, axial["result"].local_mask)
    region = reported & phantom.brain_mask
    if not flipped:
        assert metrics.nrmse(chi, axial["result"].chi_ppm, reported) < 0.01
    assert metrics.nrmse(chi, phantom.chi_ppm, region) < axial["chi"]["nrmse"] + 0.5
    deep_grey = {k: v for k, v in phantom.label_names.items() if v in DEEP_GREY_MATTER}
    errors = metrics.roi_mean_errors_ppb(chi, phantom.chi_ppm, phantom.labels, deep_grey, region)
    assert max(abs(error) for error in errors.values()) < ROI_ERROR_MAX_PPB, errors


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_the_magnitudes_units_do_not_change_the_map(axial, scale):
    # Magnitude comes in any unit (DICOM integers to 4095, floats scaled to 1, a coil combination's sum):
    # every use of it (the echo fit's weights, the mask, the magnitude's edges) must be relative.
    # Measured: the same reported voxels and chi within 0.0006 % (relative NRMSE) at both scales (0.025 % at
    # stop 37, when the second pass's edges were a threshold on the first estimate of chi, where float rounding
    # decided a few voxels; a ramp since).
    acquisition = axial["phantom"].acquisition
    rescaled = MultiEchoGRE(acquisition.magnitude * np.float32(scale), acquisition.phase, acquisition.echo_times_s,
                            acquisition.b0_tesla, affine=acquisition.affine)
    result = run_pipeline(rescaled, load_config("consensus"))
    assert np.array_equal(result.local_mask, axial["result"].local_mask)
    assert metrics.nrmse(result.chi_ppm, axial["result"].chi_ppm, result.local_mask) < 0.01
