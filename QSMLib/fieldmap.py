"""Echo combination: unwrapped multi-echo phase -> total field in Hz."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._progress import CancelToken, ProgressCallback, check_cancel
from .errors import QSMInputError


def weighted_linear(
    unwrapped_phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    intercept: bool = True,
    mask: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted least-squares fit of phase against echo time.

    Fits ``phi_n = phi_0 + 2 pi f TE_n`` per voxel with weights
    ``|S_n|^2`` (inverse phase-noise variance, since sigma_phi ~ sigma/|S|).
    Without an intercept the fit goes through the origin with weights
    ``|S_n|^2 TE_n^2`` (valid once phase offsets are removed).

    Parameters
    ----------
    unwrapped_phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Unwrapped phase in radians.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude (any scale).
    echo_times_s : sequence of float
        Echo times in seconds.
    intercept : bool
        Fit a per-voxel phase offset too (needs at least 2 echoes). A single
        echo is always fitted through the origin.

    Returns
    -------
    field_hz : numpy.ndarray of float32, shape (n0, n1, n2)
        Frequency offset in Hz.
    extras : dict
        ``fit_residual_rad``: RMS weighted residual (radians) per voxel;
        ``field_weight``: relative reliability in [0, 1] (proportional to the
        inverse standard deviation of the fitted field, 1 at the 99th
        percentile inside ``mask`` or the volume).
    """
    del progress
    check_cancel(cancel)
    times = np.asarray(echo_times_s, dtype=np.float32).reshape(-1, 1, 1, 1)
    if times.shape[0] != unwrapped_phase.shape[0]:
        raise QSMInputError(
            f"{times.shape[0]} echo times for {unwrapped_phase.shape[0]} echoes in the phase."
        )
    weights = magnitude.astype(np.float32) ** 2
    two_pi = np.float32(2.0 * np.pi)
    if intercept and unwrapped_phase.shape[0] >= 2:
        s0 = weights.sum(axis=0)
        s1 = (weights * times).sum(axis=0)
        s2 = (weights * times * times).sum(axis=0)
        y0 = (weights * unwrapped_phase).sum(axis=0)
        y1 = (weights * times * unwrapped_phase).sum(axis=0)
        determinant = s0 * s2 - s1 * s1
        safe = determinant > 0
        determinant = np.where(safe, determinant, 1.0)
        slope = np.where(safe, (s0 * y1 - s1 * y0) / determinant, 0.0)
        offset = np.where(safe, (s2 * y0 - s1 * y1) / determinant, 0.0)
        # Var(slope) = s0 / det for unit noise per weight: information = det / s0.
        information = np.where(safe, determinant / np.maximum(s0, 1e-30), 0.0)
    else:
        weights_t2 = weights * times * times
        information = weights_t2.sum(axis=0)
        safe = information > 0
        slope = np.where(safe, (weights * times * unwrapped_phase).sum(axis=0) / np.where(safe, information, 1), 0)
        offset = np.zeros_like(slope)
    residual = unwrapped_phase - (offset + slope * times)
    residual_rms = np.sqrt((weights * residual * residual).sum(axis=0) / np.maximum(weights.sum(axis=0), 1e-30))
    return (slope / two_pi).astype(np.float32), {
        "fit_residual_rad": residual_rms.astype(np.float32),
        "field_weight": _normalised_weight(np.sqrt(information), mask),
    }


def _normalised_weight(inverse_sd: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    region = inverse_sd[mask] if mask is not None and mask.any() else inverse_sd[inverse_sd > 0]
    scale = float(np.percentile(region, 99)) if region.size else 1.0
    return np.clip(inverse_sd / max(scale, 1e-30), 0.0, 1.0).astype(np.float32)


def per_echo_fields(unwrapped_phase: np.ndarray, echo_times_s: Sequence[float]) -> np.ndarray:
    """Field in Hz of each echo on its own, ``phi_n / (2 pi TE_n)``, shape (echo, n0, n1, n2)."""
    times = np.asarray(echo_times_s, dtype=np.float32).reshape(-1, 1, 1, 1)
    return (unwrapped_phase / (np.float32(2.0 * np.pi) * times)).astype(np.float32)


#: Echo-combination methods by registry name: ``method(unwrapped_phase,
#: magnitude, echo_times_s, *, progress=None, cancel=None, **params)`` ->
#: ``(field_hz, dict of maps)`` with at least ``field_weight``.
METHODS = {"weighted_linear": weighted_linear}
