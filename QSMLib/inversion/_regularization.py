"""Regularisation chosen from the data: the noise of a field map and rules that turn it into ``lambda``."""

from __future__ import annotations

from typing import Optional

import numpy as np

#: Gaussian consistency of the median absolute deviation: sigma = MAD / 0.6745.
_MAD_TO_SIGMA = 0.6744897501960817


def field_noise(field: np.ndarray, mask: np.ndarray, weight: Optional[np.ndarray] = None) -> float:
    """Standard deviation of the white noise in a field map, from its finest-scale detail.

    The 3D Haar detail of every 2x2x2 block that lies in ``mask``
    (alternating signs over the eight voxels, divided by ``sqrt(8)``) has the
    noise's standard deviation and cancels everything linear in space; its
    median absolute value over the blocks (Donoho and Johnstone's robust
    estimator) ignores the few blocks that hold an edge of the signal.

    Parameters
    ----------
    field : numpy.ndarray, shape (n0, n1, n2)
        Field map in any unit.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where the field is valid.
    weight : numpy.ndarray, optional
        Data weight ``W``: the estimate is then the noise of ``W field``,
        which is what a weighted data term sees.

    Returns
    -------
    float
        Noise standard deviation in the unit of ``field`` (0 when no whole
        block lies in the mask).

    References
    ----------
    Donoho DL, Johnstone IM. Ideal spatial adaptation by wavelet shrinkage.
    Biometrika 1994;81:425-455.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> smooth = np.indices((40, 40, 40)).sum(axis=0).astype(np.float32)
    >>> noisy = smooth + 0.3 * rng.standard_normal(smooth.shape).astype(np.float32)
    >>> round(field_noise(noisy, np.ones(smooth.shape, bool)), 1)
    0.3
    """
    values = np.asarray(field, dtype=np.float32)
    if weight is not None:
        values = values * np.asarray(weight, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    even = [n - n % 2 for n in values.shape]
    values = values[: even[0], : even[1], : even[2]]
    inside = mask[: even[0], : even[1], : even[2]]
    detail = np.zeros([n // 2 for n in even], dtype=np.float32)
    whole = np.ones(detail.shape, dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                sign = np.float32(1 - 2 * ((i + j + k) % 2))
                detail += sign * values[i::2, j::2, k::2]
                whole &= inside[i::2, j::2, k::2]
    if not whole.any():
        return 0.0
    return float(np.median(np.abs(detail[whole])) / np.sqrt(8.0) / _MAD_TO_SIGMA)
