"""R2* and T2* maps from multi-echo magnitude.

Registry ``METHODS``: ``method(magnitude, echo_times_s, *, mask=None,
progress=None, cancel=None, **params)`` -> dict of maps (``r2star`` in 1/s,
``t2star`` in s). ``"none"`` computes nothing.

- ``loglinear``: weighted least squares of ``log |S_n|`` against TE, echoes
  below a noise floor left out (the Rician floor would flatten the decay).
- ``arlo``: auto-regression on linear operations (Pei et al., MRM 2015): the
  closed-form mono-exponential fit from integrals of the decay.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import scipy.ndimage as ndi

from ._morphology import otsu_threshold
from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .contract import Method
from .errors import QSMInputError

#: Median of a Rayleigh distribution over its scale parameter, sqrt(2 ln 2).
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))


def no_relaxometry(magnitude: np.ndarray, echo_times_s: Sequence[float]) -> dict[str, np.ndarray]:
    """Compute no relaxation map."""
    return {}


def _validated(magnitude: np.ndarray, echo_times_s: Sequence[float], minimum: int) -> tuple[np.ndarray, np.ndarray]:
    magnitude = np.asarray(magnitude, dtype=np.float32)
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if magnitude.ndim != 4 or magnitude.shape[0] != times.size:
        raise QSMInputError(
            f"R2* mapping needs magnitude shaped (echo, n0, n1, n2) with one echo time per echo; got "
            f"{magnitude.shape} and {times.size} echo time(s)."
        )
    if times.size < minimum:
        raise QSMInputError(f"This R2* method needs at least {minimum} echoes, got {times.size}.")
    return magnitude, times


def _maps(r2star: np.ndarray, mask: Optional[np.ndarray], max_r2star_per_s: float) -> dict[str, np.ndarray]:
    """Clip R2* to [0, max], zero it outside the mask, and invert to T2* (0 where R2* is 0)."""
    r2star = np.nan_to_num(r2star.astype(np.float32), nan=0.0, posinf=max_r2star_per_s, neginf=0.0)
    np.clip(r2star, 0.0, np.float32(max_r2star_per_s), out=r2star)
    if mask is not None:
        r2star[~np.asarray(mask, dtype=bool)] = 0.0
    t2star = np.zeros_like(r2star)
    np.divide(np.float32(1.0), r2star, out=t2star, where=r2star > 0)
    return {"r2star": r2star, "t2star": t2star}


def estimate_noise_sigma(magnitude: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Noise standard deviation (per real/imaginary channel) from the background.

    The background is taken as the voxels outside the mask dilated by 3
    voxels; without a mask, the object is the first echo above Otsu's
    threshold. The background magnitude is Rayleigh distributed, whose median
    is ``sigma sqrt(2 ln 2)``.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
    mask : numpy.ndarray of bool, optional

    Returns
    -------
    float
        Estimated sigma in magnitude units (0 if the background is empty).
    """
    if mask is None or not np.any(mask):
        first = np.asarray(magnitude[0], dtype=np.float32)
        mask = first > otsu_threshold(first[first > 0]) if np.any(first > 0) else first > 0
    last = np.asarray(magnitude[-1], dtype=np.float32)
    background = last[~ndi.binary_dilation(mask, iterations=3)]
    background = background[background > 0]
    if background.size == 0:
        return 0.0
    return float(np.median(background)) / _RAYLEIGH_MEDIAN


def loglinear(
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    mask: Optional[np.ndarray] = None,
    noise_floor_snr: float = 3.0,
    max_r2star_per_s: float = 1000.0,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> dict[str, np.ndarray]:
    """R2* by weighted log-linear least squares with a noise floor.

    Fits ``log |S_n| = log S_0 - R2* TE_n`` per voxel with weights
    ``|S_n|^2`` (the variance of ``log |S|`` is about ``sigma^2 / |S|^2``),
    leaving out echoes whose magnitude is below ``noise_floor_snr`` times the
    noise level (:func:`estimate_noise_sigma`); the first two echoes are
    always kept so every voxel has a fit.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Multi-echo magnitude.
    echo_times_s : sequence of float
        Echo times in seconds (any spacing, at least 2).
    mask : numpy.ndarray of bool, shape (n0, n1, n2), optional
        Maps are 0 outside; also tells where the background (noise) is.
    noise_floor_snr : float
        Echoes below this many noise standard deviations are left out.
    max_r2star_per_s : float
        R2* is clipped to [0, max_r2star_per_s], 1/s.

    Returns
    -------
    dict
        ``r2star`` (1/s) and ``t2star`` (s, 0 where R2* is 0), float32
        (n0, n1, n2).

    References
    ----------
    Langkammer C, et al. Quantitative MR imaging of brain iron: a postmortem
    validation study. Radiology 2010;257:455-462 (log-linear R2* at 3 T).

    Examples
    --------
    >>> import numpy as np
    >>> times = (0.005, 0.010, 0.015, 0.020)
    >>> magnitude = np.stack([np.full((2, 2, 2), 100 * np.exp(-25.0 * t), np.float32) for t in times])
    >>> maps = loglinear(magnitude, times)
    >>> round(float(maps["r2star"][0, 0, 0]), 2), round(float(maps["t2star"][0, 0, 0]), 4)
    (25.0, 0.04)
    """
    magnitude, times = _validated(magnitude, echo_times_s, 2)
    check_cancel(cancel)
    floor = np.float32(noise_floor_snr * estimate_noise_sigma(magnitude, mask))
    t = times.astype(np.float32).reshape(-1, 1, 1, 1)
    weights = np.square(magnitude)
    weights[2:][magnitude[2:] <= floor] = 0.0
    report(progress, 0.3, "R2*: log-linear fit")
    log_signal = np.log(np.maximum(magnitude, np.float32(1e-30)))
    s0 = weights.sum(axis=0)
    s1 = (weights * t).sum(axis=0)
    s2 = (weights * t * t).sum(axis=0)
    y0 = (weights * log_signal).sum(axis=0)
    y1 = (weights * t * log_signal).sum(axis=0)
    determinant = s0 * s2 - s1 * s1
    valid = determinant > 0
    slope = np.zeros_like(s0)
    np.divide(s0 * y1 - s1 * y0, determinant, out=slope, where=valid)
    report(progress, 1.0, "R2* done")
    return _maps(-slope, mask, max_r2star_per_s)


def _quadratic_integral_weights(t0: float, t1: float, t2: float) -> tuple[float, float, float]:
    """Weights a_k with sum a_k f(t_k) = integral from t0 to t2 of the parabola through the three samples."""
    weights = []
    for k, tk in enumerate((t0, t1, t2)):
        others = [t for j, t in enumerate((t0, t1, t2)) if j != k]
        basis = np.poly1d(np.poly(others)) / float(np.prod([tk - t for t in others]))
        antiderivative = basis.integ()
        weights.append(float(antiderivative(t2) - antiderivative(t0)))
    return weights[0], weights[1], weights[2]


def arlo(
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    mask: Optional[np.ndarray] = None,
    max_r2star_per_s: float = 1000.0,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> dict[str, np.ndarray]:
    """R2* by auto-regression on linear operations (ARLO).

    For ``S(t) = S_0 exp(-R2* t)``, ``S(t_n) - S(t_{n+2}) = R2* * integral of S
    from t_n to t_{n+2}``. The integral of each echo triple is taken by the
    three-point (Simpson) rule, exact for the parabola through the samples,
    which also handles uneven spacing; R2* is the least-squares ratio over
    all triples, ``sum d_n s_n / sum s_n^2``. Closed form, no iterations,
    noise-robust; needs at least 3 echoes.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Multi-echo magnitude.
    echo_times_s : sequence of float
        Echo times in seconds (at least 3).
    mask : numpy.ndarray of bool, shape (n0, n1, n2), optional
        Maps are 0 outside.
    max_r2star_per_s : float
        R2* is clipped to [0, max_r2star_per_s], 1/s.

    Returns
    -------
    dict
        ``r2star`` (1/s) and ``t2star`` (s), float32 (n0, n1, n2).

    References
    ----------
    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential
    fitting based on Auto-Regression on Linear Operations (ARLO) of data.
    MRM 2015;73:843-850.

    Examples
    --------
    >>> import numpy as np
    >>> times = (0.005, 0.010, 0.015, 0.020)
    >>> magnitude = np.stack([np.full((2, 2, 2), 100 * np.exp(-25.0 * t), np.float32) for t in times])
    >>> round(float(arlo(magnitude, times)["r2star"][0, 0, 0]), 1)
    25.0
    """
    magnitude, times = _validated(magnitude, echo_times_s, 3)
    numerator = np.zeros(magnitude.shape[1:], dtype=np.float32)
    denominator = np.zeros(magnitude.shape[1:], dtype=np.float32)
    for first in range(times.size - 2):
        check_cancel(cancel)
        a0, a1, a2 = _quadratic_integral_weights(*times[first : first + 3])
        integral = np.float32(a0) * magnitude[first] + np.float32(a1) * magnitude[first + 1]
        integral += np.float32(a2) * magnitude[first + 2]
        numerator += integral * (magnitude[first] - magnitude[first + 2])
        denominator += integral * integral
        report(progress, (first + 1) / (times.size - 2), "R2*: ARLO")
    r2star = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=r2star, where=denominator > 0)
    return _maps(r2star, mask, max_r2star_per_s)


METHODS = {
    "none": Method(no_relaxometry),
    "loglinear": Method(loglinear, inputs=("mask",)),
    "arlo": Method(arlo, inputs=("mask",)),
}
