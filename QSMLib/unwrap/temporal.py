"""Temporal unwrapping: multi-echo phase from one spatially unwrapped echo.

Once the echo-independent phase offset is removed (MCPC-3D-S), the phase of
echo n is ``2 pi f TE_n``: an unwrapped echo predicts the others, and each
one only needs the whole number of turns that brings it closest to the
prediction, ``phi_n - 2 pi round((phi_n - predicted_n) / 2 pi)`` (ROMEO's
temporal unwrapping; Dymerska et al., MRM 2021). The prediction here is the
weighted through-origin fit of all echoes unwrapped so far, so noise in a
single echo is not amplified by ``TE_n / TE_ref``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._parallel import for_each_slab
from .._progress import CancelToken, check_cancel
from ..errors import QSMInputError

_TWO_PI = np.float32(2.0 * np.pi)


def temporal_unwrap(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    template: np.ndarray,
    template_echo: int = 0,
    *,
    out: Optional[np.ndarray] = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Unwrap every echo in time from one spatially unwrapped template echo.

    Echoes after the template are done in increasing echo time, then those
    before it in decreasing echo time. Echo n is predicted as ``TE_n * s``
    where ``s = sum(w_k TE_k phi_k) / sum(w_k TE_k^2)`` runs over the echoes
    already unwrapped, with weights ``w_k = |S_k|^2`` (inverse phase-noise
    variance).

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians, offset-free (``phi_n = 2 pi f TE_n``).
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude (weights).
    echo_times_s : sequence of float
        Echo times, seconds.
    template : numpy.ndarray, shape (n0, n1, n2)
        The template echo, spatially unwrapped.
    template_echo : int
        Zero-based index of the template echo.
    out : numpy.ndarray of float32, shape (echo, n0, n1, n2), optional
        Where to write the result; may be ``phase`` itself (each echo's
        wrapped phase is read before its unwrapped phase is written).
    cancel : callable or threading.Event, optional

    Returns
    -------
    numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Unwrapped phase; the template echo is ``template`` itself.

    Examples
    --------
    >>> import numpy as np
    >>> times = (0.004, 0.008, 0.012)
    >>> true = np.stack([np.full((2, 2, 2), 2 * np.pi * 100.0 * t, np.float32) for t in times])  # 100 Hz
    >>> wrapped = np.angle(np.exp(1j * true)).astype(np.float32)
    >>> unwrapped = temporal_unwrap(wrapped, np.ones_like(wrapped), times, true[0], template_echo=0)
    >>> bool(np.allclose(unwrapped, true, atol=1e-4))
    True
    """
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if phase.shape[0] != times.size or magnitude.shape != phase.shape or template.shape != phase.shape[1:]:
        raise QSMInputError(
            f"Temporal unwrapping needs phase and magnitude (echo, n0, n1, n2) with one echo time per echo "
            f"and a template of one echo's shape; got {phase.shape}, {magnitude.shape}, {times.size} echo "
            f"time(s) and {template.shape}."
        )
    if out is not None and (out.shape != phase.shape or out.dtype != np.float32):
        raise QSMInputError(f"out must be float32 of the phase's shape {phase.shape}, got {out.dtype} {out.shape}.")
    unwrapped = np.empty(phase.shape, dtype=np.float32) if out is None else out
    # A floor keeps the ratio defined where the magnitude is 0 (outside the object).
    floor = np.float32(1e-12) * max(float(np.square(magnitude[template_echo], dtype=np.float32).max()), 1e-30)
    order = list(range(template_echo + 1, times.size)) + list(range(template_echo - 1, -1, -1))

    def unwrap_slab(slab: slice) -> None:
        unwrapped[template_echo, slab] = template[slab]
        weight = np.square(magnitude[template_echo, slab], dtype=np.float32)
        weight += floor
        te = np.float32(times[template_echo])
        numerator = weight * (te * template[slab])
        denominator = weight * (te * te)
        for echo in order:
            check_cancel(cancel)
            te = np.float32(times[echo])
            predicted = numerator / denominator
            predicted *= te
            wrapped = np.asarray(phase[echo, slab], dtype=np.float32)
            turns = wrapped - predicted
            turns /= _TWO_PI
            np.rint(turns, out=turns)
            volume = wrapped - _TWO_PI * turns
            unwrapped[echo, slab] = volume
            weight = np.square(magnitude[echo, slab], dtype=np.float32)
            weight += floor
            numerator += weight * (te * volume)
            denominator += weight * (te * te)

    for_each_slab(unwrap_slab, phase.shape[1], phase[0, 0].size)
    return unwrapped
