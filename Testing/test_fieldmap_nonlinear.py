"""Echo combination: the nonlinear complex fit next to the weighted linear fit."""

from __future__ import annotations

import numpy as np
import pytest

from QSMLib.errors import QSMInputError
from QSMLib.fieldmap import METHODS, nonlinear_complex, weighted_linear

ECHO_TIMES_S = (0.004, 0.008, 0.012, 0.016, 0.020, 0.024)


def _signal(offset=True, sigma=0.0, seed=0):
    rng = np.random.default_rng(seed)
    shape = (10, 11, 12)
    field_hz = rng.uniform(-200, 200, shape).astype(np.float32)
    phi0 = rng.uniform(-1, 1, shape).astype(np.float32) if offset else np.zeros(shape, np.float32)
    times = np.asarray(ECHO_TIMES_S, np.float32).reshape(-1, 1, 1, 1)
    magnitude = np.exp(-times * 40.0) * np.ones((1, *shape), np.float32)
    phase = phi0 + 2 * np.pi * field_hz * times + rng.normal(0, sigma, (len(ECHO_TIMES_S), *shape)) / magnitude
    return phase.astype(np.float32), magnitude.astype(np.float32), field_hz


@pytest.mark.parametrize("intercept", [True, False])
def test_noise_free_fit_is_exact(intercept):
    phase, magnitude, field_hz = _signal(offset=intercept)
    fitted, maps = nonlinear_complex(phase, magnitude, ECHO_TIMES_S, intercept=intercept)
    assert METHODS["nonlinear"].function is nonlinear_complex
    assert fitted.dtype == np.float32 and fitted.shape == field_hz.shape
    np.testing.assert_allclose(fitted, field_hz, atol=2e-3)
    assert maps["fit_residual_rad"].max() < 1e-3
    assert 0 <= maps["field_weight"].min() and maps["field_weight"].max() <= 1


def test_a_whole_turn_in_one_echo_does_not_bias_the_nonlinear_fit():
    phase, magnitude, field_hz = _signal(offset=False, sigma=0.01)
    broken = phase.copy()
    broken[3, :5] += 2 * np.pi  # an unwrapping error in echo 4 of half the voxels
    linear, linear_maps = weighted_linear(broken, magnitude, ECHO_TIMES_S, intercept=False)
    nonlinear, _ = nonlinear_complex(broken, magnitude, ECHO_TIMES_S, intercept=False)
    assert np.abs(linear - field_hz)[:5].min() > 2.0
    assert np.abs(nonlinear - field_hz).max() < 0.5
    # The linear fit's residual flags the voxels it got wrong.
    assert linear_maps["fit_residual_rad"][:5].min() > 10 * linear_maps["fit_residual_rad"][5:].max()


def test_low_signal_noise_is_fitted_at_least_as_well_as_linearly():
    phase, magnitude, field_hz = _signal(offset=False, sigma=0.08, seed=1)
    linear, _ = weighted_linear(phase, magnitude, ECHO_TIMES_S, intercept=False)
    nonlinear, maps = nonlinear_complex(phase, magnitude, ECHO_TIMES_S, intercept=False)
    error_linear = np.sqrt(np.mean((linear - field_hz) ** 2))
    error_nonlinear = np.sqrt(np.mean((nonlinear - field_hz) ** 2))
    assert error_nonlinear <= 1.01 * error_linear
    assert np.median(maps["fit_residual_rad"]) > 0.05


def test_progress_and_bad_input():
    phase, magnitude, _ = _signal()
    seen = []
    nonlinear_complex(phase, magnitude, ECHO_TIMES_S, progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0
    with pytest.raises(QSMInputError, match="echo times"):
        nonlinear_complex(phase, magnitude, ECHO_TIMES_S[:3])
