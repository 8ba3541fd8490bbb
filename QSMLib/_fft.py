"""FFT helpers: zero padding to fast lengths, multi-threaded real FFTs.

All transforms use :mod:`scipy.fft` on the last three axes with the threads
that :func:`QSMLib._threads.thread_count` allows (every core unless
``threads`` is set), and keep float32/complex64 inputs in single precision.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import scipy.fft

from ._threads import thread_count


def padded_shape(shape: Sequence[int], pad_factor: float = 1.5) -> tuple[int, ...]:
    """Smallest fast FFT shape that is at least ``pad_factor`` times ``shape``.

    Zero padding keeps circular convolution from wrapping fields from one side
    of the volume onto the other.
    """
    return tuple(scipy.fft.next_fast_len(int(math.ceil(n * pad_factor)), real=True) for n in shape)


def pad(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad the last ``len(shape)`` axes of ``volume`` at their ends to ``shape``."""
    lead = volume.ndim - len(shape)
    widths = [(0, 0)] * lead + [(0, int(s) - n) for s, n in zip(shape, volume.shape[lead:])]
    return np.pad(volume, widths)


def crop(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pad`: keep the first ``shape`` samples of the last axes."""
    lead = volume.ndim - len(shape)
    return volume[(Ellipsis,) + tuple(slice(0, n) for n in shape)] if lead >= 0 else volume


def rfftn(volume: np.ndarray) -> np.ndarray:
    """3D real FFT of the last three axes."""
    return scipy.fft.rfftn(volume, axes=(-3, -2, -1), workers=thread_count())


def irfftn(spectrum: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`rfftn` for a real volume of spatial ``shape``."""
    return scipy.fft.irfftn(spectrum, s=tuple(shape), axes=(-3, -2, -1), workers=thread_count())


def fftn(volume: np.ndarray) -> np.ndarray:
    """3D complex FFT of the last three axes."""
    return scipy.fft.fftn(volume, axes=(-3, -2, -1), workers=thread_count())


def ifftn(spectrum: np.ndarray) -> np.ndarray:
    """3D inverse complex FFT of the last three axes."""
    return scipy.fft.ifftn(spectrum, axes=(-3, -2, -1), workers=thread_count())


def frequency_grids(
    shape: Sequence[int], voxel_size_mm: Sequence[float], *, real: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) per axis, broadcastable to the spectrum.

    With ``real=True`` the last axis holds the non-negative half that
    :func:`rfftn` returns.
    """
    n0, n1, n2 = (int(n) for n in shape)
    v0, v1, v2 = (float(v) for v in voxel_size_mm)
    k0 = np.fft.fftfreq(n0, d=v0).astype(np.float32)[:, None, None]
    k1 = np.fft.fftfreq(n1, d=v1).astype(np.float32)[None, :, None]
    last = np.fft.rfftfreq(n2, d=v2) if real else np.fft.fftfreq(n2, d=v2)
    k2 = last.astype(np.float32)[None, None, :]
    return k0, k1, k2


def mask_bounding_box(mask: np.ndarray, margin_voxels: Sequence[Union[int, Sequence[int]]]) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``margin_voxels`` per axis (clipped).

    Each axis's margin is one number for both sides or a pair (before, after).
    """
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return tuple(slice(0, n) for n in mask.shape)
        before, after = np.broadcast_to(np.asarray(margin_voxels[axis], dtype=np.int64), (2,))
        start = max(int(present[0]) - int(before), 0)
        stop = min(int(present[-1]) + 1 + int(after), mask.shape[axis])
        slices.append(slice(start, stop))
    return tuple(slices)
