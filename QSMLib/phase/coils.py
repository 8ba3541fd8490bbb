"""Coil combination of uncombined multi-channel multi-echo data by MCPC-3D-S.

Each receive channel has its own phase offset (its sensitivity's phase), so
the complex sum of the channels cancels signal where offsets disagree.
MCPC-3D-S (Eckstein et al., MRM 2018) estimates every channel's offset from
the first two echoes (:func:`QSMLib.phase.offsets.estimate_offsets`),
removes it and sums the channels weighted by their magnitude:

    C_n = sum_c |S_cn| S_cn exp(-i phi0_c),   magnitude sqrt(|C_n|), phase angle(C_n)

With offsets removed, ``|C_n| = sum_c |S_cn|^2``, so the magnitude is the
root-sum-of-squares and the phase is offset-free: ``2 pi f TE_n``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._wrapping import complex_product
from ..errors import QSMInputError
from .offsets import check_echo_pair, estimate_offsets


def combine_coils_mcpc3ds(
    magnitude: np.ndarray,
    phase: np.ndarray,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    *,
    offset_echoes: Sequence[int] = (0, 1),
    sigma_mm: float = 5.0,
    estimation_voxel_mm: float = 2.0,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine channels into one magnitude and one offset-free phase per echo.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, coil, n0, n1, n2)
        Magnitude per echo and receive channel.
    phase : numpy.ndarray, shape (echo, coil, n0, n1, n2)
        Wrapped phase per echo and channel, radians.
    echo_times_s : sequence of float
        Echo times in seconds (any spacing).
    voxel_size_mm : sequence of 3 float
        Voxel size per spatial array axis.
    offset_echoes : pair of int
        Zero-based indices of the two echoes the offsets are estimated from.
    sigma_mm : float
        Gaussian smoothing of each channel's offset, mm.
    estimation_voxel_mm : float
        Grid on which the offsets are estimated, mm.
    progress : callable(fraction, message), optional
    cancel : callable or threading.Event, optional

    Returns
    -------
    magnitude : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Combined magnitude (root-sum-of-squares where the offsets are right).
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Combined phase, radians in [-pi, pi), with the offsets removed.

    References
    ----------
    Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient
    combination of multi-channel phase data from multi-echo acquisitions
    (ASPIRE). MRM 2018;79:2996-3006.
    """
    magnitude = np.asarray(magnitude)
    phase = np.asarray(phase)
    if phase.ndim != 5 or magnitude.shape != phase.shape:
        raise QSMInputError(
            f"Coil combination needs magnitude and phase shaped (echo, coil, n0, n1, n2); got {magnitude.shape} "
            f"and {phase.shape}. Reorder the axes so that echo comes first and the coil second."
        )
    n_echoes, n_coils = phase.shape[:2]
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if times.size != n_echoes:
        raise QSMInputError(f"{times.size} echo time(s) for {n_echoes} echo(es): give one echo time per echo.")
    if not (np.all(np.isfinite(magnitude)) and np.all(np.isfinite(phase))):
        raise QSMInputError(
            "The coil data hold NaN or infinite values: replace them (e.g. by 0) before combining the coils."
        )
    first, second = check_echo_pair(times, n_echoes, offset_echoes)
    report(progress, 0.0, "MCPC-3D-S: estimating coil phase offsets")
    spatial = phase.shape[2:]
    hip = np.zeros(spatial, dtype=np.complex64)
    signal_first = np.empty((n_coils, *spatial), dtype=np.complex64)
    for coil in range(n_coils):
        check_cancel(cancel)
        signal_first[coil] = _signal(magnitude[first, coil], phase[first, coil])
        hip += complex_product(_signal(magnitude[second, coil], phase[second, coil]), np.conj(signal_first[coil]))
    ratio = times[first] / (times[second] - times[first])
    offsets = estimate_offsets(
        signal_first, hip, ratio, voxel_size_mm, sigma_mm=sigma_mm, estimation_voxel_mm=estimation_voxel_mm,
        cancel=cancel,
    )
    del signal_first, hip
    report(progress, 0.6, "MCPC-3D-S: combining coils")
    combined_magnitude = np.empty((n_echoes, *spatial), dtype=np.float32)
    combined_phase = np.empty((n_echoes, *spatial), dtype=np.float32)
    for echo in range(n_echoes):
        total = np.zeros(spatial, dtype=np.complex64)
        for coil in range(n_coils):
            check_cancel(cancel)
            channel_magnitude = np.asarray(magnitude[echo, coil], dtype=np.float32)
            total += _signal(channel_magnitude * channel_magnitude, phase[echo, coil] - offsets[coil])
        combined_magnitude[echo] = np.sqrt(np.abs(total))
        angle = np.angle(total).astype(np.float32)
        angle[angle >= np.float32(np.pi)] = -np.float32(np.pi)
        combined_phase[echo] = angle
        report(progress, 0.6 + 0.4 * (echo + 1) / n_echoes, f"MCPC-3D-S: echo {echo + 1} combined")
    return combined_magnitude, combined_phase


def _signal(magnitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """``magnitude * exp(i phase)`` as complex64."""
    phase = np.asarray(phase, dtype=np.float32)
    result = np.empty(phase.shape, dtype=np.complex64)
    result.real = magnitude * np.cos(phase)
    result.imag = magnitude * np.sin(phase)
    return result
