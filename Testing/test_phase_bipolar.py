"""Bipolar readout correction and detection on a simulated 9-echo bipolar acquisition."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from synthetic import TEST_DATA

from QSMLib.acquisition import MultiEchoGRE
from QSMLib.errors import QSMInputError, QSMWarning
from QSMLib.fieldmap import weighted_linear
from QSMLib.io.nifti import load_acquisition
from QSMLib.phantom import simulate_head
from QSMLib.phase import (
    BIPOLAR_METHODS,
    bipolar_score,
    estimate_bipolar_error,
    linear_bipolar_correction,
    looks_bipolar,
    mcpc3ds,
)
from QSMLib.phase import bipolar as bipolar_module
from QSMLib.pipeline import PRESETS, run_pipeline
from QSMLib.unwrap import romeo

ECHO_TIMES_S = tuple(0.004 * (n + 1) for n in range(9))


@pytest.fixture(scope="module")
def monopolar():
    return simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), echo_times_s=ECHO_TIMES_S, seed=4)


@pytest.fixture(scope="module")
def bipolar():
    """Same head and noise as ``monopolar``; even echoes carry 0.3 rad + 1 rad across the FOV along axis 0."""
    return simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), echo_times_s=ECHO_TIMES_S, seed=4, bipolar=True)


def field_error_rms_hz(acquisition, truth, mask, correct: bool) -> float:
    """Consensus phase stage (MCPC-3D-S, optional bipolar correction, ROMEO, fit through 0) vs the true field."""
    phase, _ = mcpc3ds(acquisition.phase, acquisition.magnitude, ECHO_TIMES_S, acquisition.voxel_size_mm)
    if correct:
        phase, _ = linear_bipolar_correction(phase, acquisition.magnitude, ECHO_TIMES_S, acquisition.voxel_size_mm)
    unwrapped, _ = romeo(phase, acquisition.magnitude, ECHO_TIMES_S, acquisition.voxel_size_mm)
    field, _ = weighted_linear(unwrapped, acquisition.magnitude, ECHO_TIMES_S, intercept=False)
    return float(np.sqrt(np.mean((field - truth)[mask] ** 2)))


def test_even_echo_error_is_estimated(bipolar, monkeypatch):
    beta, region = estimate_bipolar_error(bipolar.acquisition.phase, bipolar.acquisition.magnitude, ECHO_TIMES_S)
    assert beta.shape == region.shape == bipolar.brain_mask.shape and beta.dtype == np.float32
    error = (beta - bipolar.bipolar_error_rad)[bipolar.brain_mask]
    assert np.sqrt(np.mean(error**2)) < 0.01
    # as large volumes are fitted: on every other voxel along each axis (odd sizes: the last voxel is sampled)
    monkeypatch.setattr(bipolar_module, "SAMPLED_FIT_VOXELS", 1)
    for crop in ((slice(None),) * 4, (slice(None), slice(0, -1), slice(0, -2), slice(0, -3))):
        phase, magnitude = bipolar.acquisition.phase[crop], bipolar.acquisition.magnitude[crop]
        sampled, sampled_region = estimate_bipolar_error(phase, magnitude, ECHO_TIMES_S)
        assert sampled.shape == sampled_region.shape == phase.shape[1:]
        brain = bipolar.brain_mask[crop[1:]]
        assert np.sqrt(np.mean((sampled - bipolar.bipolar_error_rad[crop[1:]])[brain] ** 2)) < 0.01
        assert sampled_region[brain].mean() > 0.95
        score = bipolar_score(phase, magnitude, ECHO_TIMES_S)
        assert abs(score - np.sqrt(np.mean(sampled[sampled_region].astype(np.float64) ** 2))) < 0.03 * score


def test_corrected_field_is_within_noise_and_uncorrected_is_not(monopolar, bipolar):
    truth, brain = monopolar.total_field_hz, monopolar.brain_mask
    noise_floor = field_error_rms_hz(monopolar.acquisition, truth, brain, correct=False)
    corrected = field_error_rms_hz(bipolar.acquisition, truth, brain, correct=True)
    uncorrected = field_error_rms_hz(bipolar.acquisition, truth, brain, correct=False)
    assert corrected < 1.05 * noise_floor
    assert uncorrected > 5 * noise_floor


def test_correction_returns_the_error_map(bipolar):
    acq = bipolar.acquisition
    corrected, maps = BIPOLAR_METHODS["linear"](acq.phase, acq.magnitude, ECHO_TIMES_S, acq.voxel_size_mm,
                                                remove_offset=False)
    assert set(maps) == {"bipolar_error_rad"}
    assert corrected.dtype == np.float32 and np.all(np.abs(corrected) <= np.pi)
    # Odd echoes are untouched, even ones lose beta.
    np.testing.assert_array_equal(corrected[0], acq.phase[0])
    change = np.angle(np.exp(1j * (acq.phase[1] - corrected[1])))
    np.testing.assert_allclose(change, np.angle(np.exp(1j * maps["bipolar_error_rad"])), atol=1e-4)


def test_readout_along_another_axis_and_quadratic_terms(bipolar):
    # Readout along array axis 2 (transposed data) with a quadratic term added to the even echoes.
    acq = bipolar.acquisition
    phase = np.transpose(acq.phase, (0, 2, 3, 1)).copy()
    magnitude = np.transpose(acq.magnitude, (0, 2, 3, 1))
    readout = (np.arange(phase.shape[3], dtype=np.float32) - (phase.shape[3] - 1) / 2) / phase.shape[3]
    extra = 3.0 * readout**2
    phase[1::2] = np.angle(np.exp(1j * (phase[1::2] + extra)))
    truth = np.transpose(bipolar.bipolar_error_rad, (1, 2, 0)) + extra
    brain = np.transpose(bipolar.brain_mask, (1, 2, 0))
    linear, _ = estimate_bipolar_error(phase, magnitude, ECHO_TIMES_S)
    quadratic, _ = estimate_bipolar_error(phase, magnitude, ECHO_TIMES_S, polynomial_order=2)
    explicit, _ = estimate_bipolar_error(phase, magnitude, ECHO_TIMES_S, polynomial_order=2, readout_axis=2)
    assert np.sqrt(np.mean((quadratic - truth)[brain] ** 2)) < 0.01
    assert np.sqrt(np.mean((linear - truth)[brain] ** 2)) > 0.03
    np.testing.assert_allclose(explicit, quadratic, atol=1e-5)


def test_detection(monopolar, bipolar):
    assert looks_bipolar(bipolar.acquisition.phase, bipolar.acquisition.magnitude, ECHO_TIMES_S)
    assert not looks_bipolar(monopolar.acquisition.phase, monopolar.acquisition.magnitude, ECHO_TIMES_S)
    assert bipolar_score(bipolar.acquisition.phase, bipolar.acquisition.magnitude, ECHO_TIMES_S) > 0.2
    assert bipolar_score(monopolar.acquisition.phase, monopolar.acquisition.magnitude, ECHO_TIMES_S) < 0.01
    # Two echoes cannot tell: the score is 0, not an error.
    assert bipolar_score(bipolar.acquisition.phase[:2], bipolar.acquisition.magnitude[:2], ECHO_TIMES_S[:2]) == 0.0


def test_real_monopolar_data_are_not_called_bipolar():
    folder = TEST_DATA / "invivo_3echo_crop"
    acq, _ = load_acquisition([folder / "mag.nii.gz"], [folder / "phase.nii.gz"],
                              echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0)
    assert not looks_bipolar(acq.phase, acq.magnitude, acq.echo_times_s)


def test_pipeline_corrects_bipolar_acquisitions(bipolar):
    config = PRESETS["consensus"]()
    config.inversion.method = "tkd"
    result = run_pipeline(bipolar.acquisition, config)
    assert {"bipolar_error_rad", "phase_offset_rad", "romeo_quality"} <= set(result.maps)
    # corrected first, so MCPC-3D-S runs once (no second offset estimate)
    assert list(result.timings_s)[:2] == ["bipolar", "phase_offset"] and "bipolar_offset_rad" not in result.maps
    error = (result.total_field_hz - bipolar.total_field_hz)[result.mask & bipolar.brain_mask]
    assert np.sqrt(np.mean(error**2)) < 1.0


def test_a_readout_not_given_is_told_from_the_echoes(monopolar, bipolar):
    """``bipolar=None`` (not known): bipolar echoes get the correction as if declared, monopolar ones do not."""
    config = PRESETS["consensus"]()
    config.inversion.method = "tkd"
    declared = run_pipeline(bipolar.acquisition, config)
    with pytest.warns(QSMWarning, match="look like a bipolar readout"):
        detected = run_pipeline(dataclasses.replace(bipolar.acquisition, bipolar=None), config)
    np.testing.assert_array_equal(detected.chi_ppm, declared.chi_ppm)
    chosen = detected.provenance()["chosen_parameters"]["bipolar"]
    assert chosen["readout"] == "detected bipolar" and chosen["score_rad"] > 0.2, chosen
    # declared monopolar: the even echoes keep their error, and the field shows it
    kept = run_pipeline(dataclasses.replace(bipolar.acquisition, bipolar=False), config)
    assert "bipolar" not in kept.timings_s and "bipolar" not in kept.provenance()["chosen_parameters"]
    region = detected.mask & kept.mask & bipolar.brain_mask
    errors = [float(np.std((r.total_field_hz - bipolar.total_field_hz)[region])) for r in (detected, kept)]
    assert errors[0] < 0.5 * errors[1], errors
    # monopolar echoes, readout not known: no correction, the same maps as declared monopolar
    unknown = dataclasses.replace(monopolar.acquisition, bipolar=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QSMWarning)
        told = run_pipeline(unknown, config)
    assert "bipolar" not in told.timings_s
    assert told.provenance()["chosen_parameters"]["bipolar"]["readout"] == "detected monopolar"
    np.testing.assert_array_equal(told.chi_ppm, run_pipeline(monopolar.acquisition, config).chi_ppm)
    # two echoes cannot show the error: taken as monopolar, and said so
    acquisition = monopolar.acquisition
    two = MultiEchoGRE(acquisition.magnitude[:2], acquisition.phase[:2], ECHO_TIMES_S[:2], acquisition.b0_tesla,
                       affine=acquisition.affine)
    readout = run_pipeline(two, config).provenance()["chosen_parameters"]["bipolar"]["readout"]
    assert readout.startswith("taken as monopolar"), readout


def test_the_readout_must_be_true_false_or_none(monopolar):
    with pytest.raises(QSMInputError, match="bipolar must be True"):
        dataclasses.replace(monopolar.acquisition, bipolar="yes")


@pytest.mark.parametrize(
    "times, change, message",
    [
        (ECHO_TIMES_S[:2], {}, "at least 3 echoes"),
        ((0.004, 0.008, 0.013), {}, "equally spaced"),
        (ECHO_TIMES_S[:3], {"readout_axis": 3}, "readout_axis"),
        (ECHO_TIMES_S[:3], {"polynomial_order": 0}, "polynomial_order"),
    ],
)
def test_bad_input_is_refused(times, change, message):
    data = np.ones((len(times), 6, 6, 6), np.float32)
    with pytest.raises(QSMInputError, match=message):
        estimate_bipolar_error(data, data, times, **change)
