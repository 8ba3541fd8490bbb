"""Temporal unwrapping from one spatially unwrapped echo."""

from __future__ import annotations

import numpy as np
import pytest

from QSMLib._wrapping import wrap
from QSMLib.errors import QSMInputError
from QSMLib.unwrap.temporal import temporal_unwrap


def _field_phase(echo_times_s, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices((12, 13, 14), dtype=np.float32)
    field_hz = 40.0 * (grid[0] - 6) + 3.0 * (grid[1] - 6) ** 2  # up to +-500 Hz: many turns per echo
    times = np.asarray(echo_times_s, np.float32).reshape(-1, 1, 1, 1)
    truth = 2 * np.pi * field_hz * times + rng.normal(0, 0.05, (len(echo_times_s), *field_hz.shape))
    magnitude = np.exp(-times * 30.0) * np.ones_like(truth)
    return truth.astype(np.float32), magnitude.astype(np.float32)


@pytest.mark.parametrize("echo_times_s", [(0.004, 0.008, 0.012, 0.016), (0.003, 0.0075, 0.0091, 0.017)])
@pytest.mark.parametrize("template_echo", [0, 2])
def test_every_echo_recovers_its_turns(echo_times_s, template_echo):
    truth, magnitude = _field_phase(echo_times_s)
    unwrapped = temporal_unwrap(wrap(truth), magnitude, echo_times_s, truth[template_echo], template_echo)
    assert unwrapped.dtype == np.float32
    np.testing.assert_allclose(unwrapped, truth, atol=1e-3)


def test_writing_into_the_wrapped_phase_gives_the_same_result():
    times = (0.004, 0.008, 0.012, 0.016)
    truth, magnitude = _field_phase(times)
    wrapped = wrap(truth)
    expected = temporal_unwrap(wrapped, magnitude, times, truth[1], 1)
    result = temporal_unwrap(wrapped, magnitude, times, truth[1], 1, out=wrapped)
    assert result is wrapped
    np.testing.assert_array_equal(result, expected)
    with pytest.raises(QSMInputError, match="out must be float32"):
        temporal_unwrap(wrap(truth), magnitude, times, truth[1], 1, out=np.empty(truth.shape, np.float64))


def test_noisy_late_echoes_lean_on_all_earlier_ones():
    # Echo 1 alone predicts echo 6 with 6x its noise; the running fit of echoes 1-5 does better.
    times = tuple(0.004 * (n + 1) for n in range(6))
    truth, magnitude = _field_phase(times, seed=1)
    noisy = truth.copy()
    rng = np.random.default_rng(2)
    noisy[0] += rng.normal(0, 0.45, noisy[0].shape).astype(np.float32)
    unwrapped = temporal_unwrap(wrap(noisy), magnitude, times, noisy[0], 0)
    turns = np.rint((unwrapped[1:] - truth[1:]) / (2 * np.pi))
    assert np.mean(turns != 0) < 0.02


def test_shape_mismatch_is_refused():
    truth, magnitude = _field_phase((0.004, 0.008))
    with pytest.raises(QSMInputError, match="template"):
        temporal_unwrap(truth, magnitude, (0.004, 0.008), truth[0, :-1], 0)
