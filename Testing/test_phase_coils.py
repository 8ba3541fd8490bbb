"""MCPC-3D-S coil combination of uncombined (echo, coil, ...) data, from arrays and from 5D NIfTI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from QSMLib.acquisition import MultiEchoGRE
from QSMLib.errors import QSMInputError, QSMWarning
from QSMLib.io.nifti import load_acquisition
from QSMLib.phantom import simulate_head
from QSMLib.phase import combine_coils_mcpc3ds

ECHO_TIMES_S = (0.004, 0.008, 0.012)


def coil_sensitivities(shape, voxel_mm, n_coils, seed=0):
    """Smooth complex receive sensitivities of coils on a ring around the head.

    Magnitude: broad Gaussians centred outside the head; phase: a random
    constant per coil plus a ramp and a slow wave, different for each coil.
    """
    rng = np.random.default_rng(seed)
    grid = [np.arange(n, dtype=np.float32) * voxel_mm for n in shape]
    centre = [g.mean() for g in grid]
    x, y, z = np.meshgrid(*grid, indexing="ij")
    sensitivities = []
    for coil in range(n_coils):
        angle = 2 * np.pi * coil / n_coils
        position = (centre[0] + 110 * np.cos(angle), centre[1] + 130 * np.sin(angle), centre[2] + 30 * (coil % 2))
        distance2 = (x - position[0]) ** 2 + (y - position[1]) ** 2 + (z - position[2]) ** 2
        magnitude = np.exp(-distance2 / (2 * 120.0**2))
        phase = (rng.uniform(-np.pi, np.pi) + 0.01 * (np.cos(angle) * x + np.sin(angle) * y)
                 + 0.6 * np.sin(z / 25.0 + coil))
        sensitivities.append(magnitude * np.exp(1j * phase))
    return np.array(sensitivities, np.complex64)


def simulate_coils(n_coils, snr_per_coil=200.0, seed=0):
    head = simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), echo_times_s=ECHO_TIMES_S, phase_offset=False, snr=None,
                         seed=seed)
    acq = head.acquisition
    signal = (acq.magnitude * np.exp(1j * acq.phase))[:, None] * coil_sensitivities(
        acq.spatial_shape, 3.0, n_coils, seed)[None]
    rng = np.random.default_rng(seed)
    sigma = 1.0 / snr_per_coil
    signal = signal + sigma * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    return head, np.abs(signal).astype(np.float32), np.angle(signal).astype(np.float32)


def phase_residual(phase, head):
    """(RMS after removing the common constant, |constant|) of combined minus true phase in the brain.

    The truth is the phantom's offset-free single-channel phase (which includes
    intravoxel dephasing, so it is not exactly 2 pi f TE near the sinus).
    """
    difference = np.angle(np.exp(1j * (phase - head.acquisition.phase)))[:, head.brain_mask]
    constant = float(np.angle(np.mean(np.exp(1j * difference))))
    rms = float(np.sqrt(np.mean(np.angle(np.exp(1j * (difference - constant))) ** 2)))
    return rms, abs(constant)


@pytest.fixture(scope="module", params=[8, 16])
def coils(request):
    return simulate_coils(request.param, seed=request.param)


def test_combined_phase_is_offset_free_and_magnitude_is_rss(coils):
    head, magnitude, phase = coils
    combined_magnitude, combined_phase = combine_coils_mcpc3ds(magnitude, phase, ECHO_TIMES_S, (3.0, 3.0, 3.0))
    assert combined_magnitude.shape == combined_phase.shape == (3, *head.brain_mask.shape)
    assert combined_phase.dtype == np.float32 and np.all(np.abs(combined_phase) <= np.pi)
    rms, constant = phase_residual(combined_phase, head)
    assert rms < 0.03 and constant < 0.05
    rss = np.sqrt(np.sum(magnitude.astype(np.float64) ** 2, axis=1))
    ratio = combined_magnitude[:, head.brain_mask] / rss[:, head.brain_mask]
    assert abs(np.median(ratio) - 1) < 0.01 and np.percentile(ratio, 1) > 0.97


def test_plain_complex_sum_keeps_the_coil_offsets(coils):
    head, magnitude, phase = coils
    plain = np.angle(np.sum(magnitude * np.exp(1j * phase), axis=1)).astype(np.float32)
    rms, _ = phase_residual(plain, head)
    assert rms > 0.15


def test_from_coils_builds_an_acquisition_and_marks_nan():
    head, magnitude, phase = simulate_coils(8, seed=5)
    phase[2, 3, 10, 11, 12] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acq = MultiEchoGRE.from_coils(magnitude, phase, ECHO_TIMES_S, 3.0, affine=head.acquisition.affine)
    assert any(issubclass(w.category, QSMWarning) and "NaN" in str(w.message) for w in caught)
    assert acq.magnitude.shape == (3, *head.brain_mask.shape) and acq.voxel_size_mm == (3.0, 3.0, 3.0)
    assert acq.invalid_voxels[10, 11, 12] and acq.invalid_voxels.sum() == 1
    rms, _ = phase_residual(acq.phase, head)
    assert rms < 0.03


def test_5d_nifti_is_read_as_echo_coil_and_combined(tmp_path):
    head, magnitude, phase = simulate_coils(8, seed=6)
    files = {}
    for name, data in (("mag", magnitude), ("phase", phase)):
        # SimpleITK array order (coil, echo, k, j, i) = NIfTI dims (i, j, k, echo, coil).
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(data, 1, 0)))
        image.SetSpacing((3.0, 3.0, 3.0, 1.0, 1.0))
        files[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(files[name]))
    acq, info = load_acquisition([files["mag"]], [files["phase"]], echo_times_s=list(ECHO_TIMES_S), b0_tesla=3.0,
                                 phase_scale="radians")
    assert info["coils_combined"] == 8
    assert acq.magnitude.shape == (3, *head.brain_mask.shape) and acq.voxel_size_mm == (3.0, 3.0, 3.0)
    direct, _ = combine_coils_mcpc3ds(magnitude, phase, ECHO_TIMES_S, (3.0, 3.0, 3.0))
    np.testing.assert_allclose(acq.magnitude, direct, rtol=1e-4, atol=1e-6)


def test_bad_coil_input_is_refused():
    data = np.ones((3, 2, 6, 6, 6), np.float32)
    with pytest.raises(QSMInputError, match="echo, coil"):
        combine_coils_mcpc3ds(data[0], data[0], ECHO_TIMES_S, (1, 1, 1))
    with pytest.raises(QSMInputError, match="echo time"):
        combine_coils_mcpc3ds(data, data, ECHO_TIMES_S[:2], (1, 1, 1))
    nan = data.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(QSMInputError, match="NaN"):
        combine_coils_mcpc3ds(nan, data, ECHO_TIMES_S, (1, 1, 1))
    with pytest.raises(QSMInputError, match="from_coils"):
        MultiEchoGRE(data, data, ECHO_TIMES_S, 3.0, voxel_size_mm=(1, 1, 1))
    with pytest.raises(QSMInputError, match="Voxel size"):
        MultiEchoGRE.from_coils(data, data, ECHO_TIMES_S, 3.0)
