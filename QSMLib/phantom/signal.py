"""The multi-echo GRE signal: phase offset, bipolar readout error, intravoxel dephasing, noise."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import QSMInputError


def phase_offset_map(
    axes_mm: Sequence[np.ndarray], rng: np.random.Generator, rotation: Optional[np.ndarray] = None
) -> np.ndarray:
    """A smooth echo-independent phase offset ``phi0`` (radians), like a coil's.

    A constant, a linear ramp and three broad Gaussian bumps centred around
    the head, with parameters drawn from ``rng``: a range of a few radians.
    They are defined in the head frame; ``rotation`` (see :func:`head_labels`)
    gives the orientation of an oblique grid, so the same draws give the same
    map in space whatever the grid.

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    constant = rng.uniform(-np.pi, np.pi)
    ramp = rng.uniform(-1.0, 1.0, size=3) / 100.0  # rad/mm
    to_grid = None if rotation is None else np.asarray(rotation, np.float64).T
    if to_grid is not None:
        ramp = to_grid @ ramp  # ramp . (R g) = (R^T ramp) . g
    x, y, z = (np.asarray(a, np.float64) for a in axes_mm)
    phi0 = (constant + ramp[0] * x)[:, None, None] + (ramp[1] * y)[None, :, None] + (ramp[2] * z)[None, None, :]
    phi0 = phi0.astype(np.float32)
    for _ in range(3):
        amplitude = rng.uniform(-2.0, 2.0)
        width = rng.uniform(40.0, 70.0)
        direction = rng.normal(size=3)
        centre = 110.0 * direction / np.linalg.norm(direction)
        if to_grid is not None:
            centre = to_grid @ centre  # |R g - c| = |g - R^T c|
        gauss = [np.exp(-((a - c) ** 2) / (2 * width**2)).astype(np.float32) for a, c in zip((x, y, z), centre)]
        phi0 += np.float32(amplitude) * (gauss[0][:, None, None] * gauss[1][None, :, None] * gauss[2][None, None, :])
    return phi0


def bipolar_error_map(
    axes_mm: Sequence[np.ndarray], fov_mm: float, offset_rad: float = 0.3, gradient_rad: float = 1.0
) -> np.ndarray:
    """Phase error of even echoes of a bipolar readout (readout along axis 0), radians.

    ``offset_rad`` plus a linear ramp of ``gradient_rad`` across the FOV along
    axis 0 (zero at the FOV centre), the dominant terms in Li et al. (MRM
    2015) and Eckstein et al. (MRM 2018).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    x = np.asarray(axes_mm[0], np.float64)
    ramp = (offset_rad + gradient_rad * x / float(fov_mm)).astype(np.float32)
    shape = (len(axes_mm[0]), len(axes_mm[1]), len(axes_mm[2]))
    return np.ascontiguousarray(np.broadcast_to(ramp[:, None, None], shape))


def dephasing_factor(total_field_hz: np.ndarray, echo_time_s: float) -> np.ndarray:
    """Intravoxel dephasing by the field gradient across each voxel.

    A linear field change of ``g`` Hz across a voxel averages the voxel's
    signal by ``sinc(g TE)`` per axis (negative past the first zero, i.e.
    a phase flip).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
        Signed amplitude factor.
    """
    factor = np.ones(total_field_hz.shape, np.float32)
    for axis in range(3):
        step_hz = np.gradient(total_field_hz, axis=axis)
        factor *= np.sinc(step_hz * np.float32(echo_time_s)).astype(np.float32)
    return factor


def gre_signal(
    amplitude: np.ndarray,
    total_field_hz: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    phase_offset_rad: Optional[np.ndarray] = None,
    bipolar_error_rad: Optional[np.ndarray] = None,
    noise_sigma: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    signal_phase_rad: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-echo GRE magnitude and wrapped phase from amplitude and field.

    ``S_n = A_n exp(i (phi0 + 2 pi f TE_n + beta_n)) + noise``, with the
    bipolar error ``beta`` on even echoes (2nd, 4th, ...) only.

    Parameters
    ----------
    amplitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Signed noise-free amplitude per echo (decay and dephasing included).
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Field offset in Hz.
    echo_times_s : sequence of float
        Echo times in seconds.
    phase_offset_rad, bipolar_error_rad : numpy.ndarray, shape (n0, n1, n2), optional
        Echo-independent offset ``phi0`` and the even-echo error ``beta``.
    noise_sigma : float
        Standard deviation of the real and of the imaginary noise (0: none).
    rng : numpy.random.Generator, optional
        Noise source (required when ``noise_sigma > 0``).
    signal_phase_rad : numpy.ndarray, shape (echo, n0, n1, n2), optional
        Each echo's phase from the field, in place of ``2 pi f TE_n``: a
        signal recorded in k-space, whose phase is not linear in TE where a
        voxel holds several fields (``total_field_hz`` then sets only the
        shape).

    Returns
    -------
    magnitude : numpy.ndarray of float32, shape (echo, n0, n1, n2)
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Radians in [-pi, pi). Where the signal is exactly 0 (no noise) the
        phase is the model phase, so it stays defined outside the head.
    """
    n_echoes = len(echo_times_s)
    magnitude = np.empty((n_echoes, *total_field_hz.shape), np.float32)
    phase = np.empty_like(magnitude)
    two_pi = np.float32(2.0 * np.pi)
    for echo, te in enumerate(echo_times_s):
        phi = (total_field_hz * (two_pi * np.float32(te)) if signal_phase_rad is None
               else signal_phase_rad[echo].astype(np.float32, copy=True))
        if phase_offset_rad is not None:
            phi += phase_offset_rad
        if bipolar_error_rad is not None and echo % 2 == 1:
            phi += bipolar_error_rad
        signal = np.empty(phi.shape, np.complex64)
        signal.real = amplitude[echo] * np.cos(phi)
        signal.imag = amplitude[echo] * np.sin(phi)
        if noise_sigma > 0:
            if rng is None:
                raise QSMInputError("gre_signal needs an rng (numpy.random.Generator) when noise_sigma > 0.")
            signal.real += np.float32(noise_sigma) * rng.standard_normal(phi.shape, dtype=np.float32)
            signal.imag += np.float32(noise_sigma) * rng.standard_normal(phi.shape, dtype=np.float32)
        magnitude[echo] = np.abs(signal)
        angle = np.angle(signal)
        if noise_sigma <= 0:
            empty = amplitude[echo] == 0
            angle[empty] = np.angle(np.exp(1j * phi[empty]))
        phase[echo] = angle
    # angle() returns [-pi, pi] rounded to float32, whose pi lies outside the exact interval;
    # both ends map to the float32 nearest -pi from inside, so the phase is in [-pi, pi)
    lowest = np.nextafter(-np.float32(np.pi), np.float32(0.0))
    phase[(phase >= np.float32(np.pi)) | (phase < lowest)] = lowest
    return magnitude, phase
