"""R2*/T2* maps: log-linear fit with a noise floor, and ARLO."""

from __future__ import annotations

import numpy as np
import pytest

from QSMLib.errors import QSMInputError
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PRESETS, run_pipeline
from QSMLib.relaxometry import METHODS, arlo, estimate_noise_sigma, loglinear

ECHO_TIMES_S = tuple(0.004 * (n + 1) for n in range(9))


def _decay(echo_times_s, snr=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (20, 20, 10)
    r2star = np.linspace(10.0, 80.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    mask = np.zeros(shape, bool)
    mask[3:17, 3:17, 2:8] = True
    times = np.asarray(echo_times_s, np.float64).reshape(-1, 1, 1, 1)
    signal = np.where(mask, 1.0, 0.0) * np.exp(-r2star * times).astype(np.complex128)
    if snr is not None:
        signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / snr
    return np.abs(signal).astype(np.float32), r2star, mask


@pytest.mark.parametrize("method", [loglinear, arlo])
@pytest.mark.parametrize("echo_times_s", [ECHO_TIMES_S, (0.003, 0.005, 0.0085, 0.013, 0.020)])
def test_noise_free_decay_is_recovered(method, echo_times_s):
    magnitude, r2star, mask = _decay(echo_times_s)
    maps = method(magnitude, echo_times_s, mask=mask)
    assert set(maps) == {"r2star", "t2star"} and maps["r2star"].dtype == np.float32
    np.testing.assert_allclose(maps["r2star"][mask], r2star[mask], rtol=2e-3)
    np.testing.assert_allclose(maps["t2star"][mask], 1.0 / r2star[mask], rtol=2e-3)
    assert np.all(maps["r2star"][~mask] == 0) and np.all(maps["t2star"][~mask] == 0)


@pytest.mark.parametrize("method", [loglinear, arlo])
def test_noisy_decay_is_unbiased(method):
    magnitude, r2star, mask = _decay(ECHO_TIMES_S, snr=50.0, seed=1)
    error = method(magnitude, ECHO_TIMES_S, mask=mask)["r2star"][mask] - r2star[mask]
    assert abs(np.mean(error)) < 1.0 and np.sqrt(np.mean(error**2)) < 3.0


def test_noise_floor_keeps_fast_decay_from_flattening():
    # R2* = 150 1/s at SNR 30: late echoes sit on the Rician floor.
    times = ECHO_TIMES_S
    shape = (30, 30, 10)
    rng = np.random.default_rng(2)
    mask = np.zeros(shape, bool)
    mask[5:25, 5:25, 2:8] = True
    t = np.asarray(times).reshape(-1, 1, 1, 1)
    clean = np.where(mask, np.exp(-150.0 * t), 0.0)
    noisy = np.abs(clean + (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) / 30.0)
    noisy = noisy.astype(np.float32)
    for given in (mask, None):
        assert 0.9 < estimate_noise_sigma(noisy, given) * 30.0 < 1.1
    with_floor = loglinear(noisy, times, mask=mask)["r2star"][mask]
    without = loglinear(noisy, times, mask=mask, noise_floor_snr=0.0)["r2star"][mask]
    assert abs(np.median(with_floor) - 150.0) < abs(np.median(without) - 150.0)
    assert abs(np.median(with_floor) - 150.0) < 20.0


def test_phantom_r2star_in_the_pipeline():
    head = simulate_head(voxel_size_mm=(4.0, 4.0, 4.0), echo_times_s=ECHO_TIMES_S[:6], seed=1)
    config = PRESETS["fast"]()
    config.relaxometry.method = "arlo"
    result = run_pipeline(head.acquisition, config)
    assert {"r2star", "t2star"} <= set(result.maps) and "relaxometry" in result.timings_s
    white = (head.labels == head_label(head, "white_matter")) & result.mask
    pallidus = (head.labels == head_label(head, "globus_pallidus")) & result.mask
    # Iron-rich globus pallidus relaxes faster than white matter (Langkammer 2010).
    assert np.median(result.maps["r2star"][pallidus]) > np.median(result.maps["r2star"][white]) > 5.0


def head_label(head, name):
    return next(value for value, label in head.label_names.items() if label == name)


def test_registry_and_bad_input():
    assert METHODS["loglinear"].function is loglinear and METHODS["arlo"].function is arlo
    assert METHODS["none"](None, None) == {}
    magnitude, _, _ = _decay(ECHO_TIMES_S[:2])
    with pytest.raises(QSMInputError, match="at least 3"):
        arlo(magnitude, ECHO_TIMES_S[:2])
    with pytest.raises(QSMInputError, match="one echo time per echo"):
        loglinear(magnitude, ECHO_TIMES_S[:3])
