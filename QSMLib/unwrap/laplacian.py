"""Laplacian phase unwrapping (Schofield & Zhu, Opt. Lett. 2003).

``phi = lap^-1 [cos(psi) lap(sin psi) - sin(psi) lap(cos psi)]`` with the
discrete periodic Laplacian, inverted in k-space. Fast and robust to noise,
but not exact: it returns the phase up to a constant and slightly alters
values near strong gradients (the 2024 consensus prefers path-based methods).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import PhaseResult


def _laplacian_eigenvalues(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Eigenvalues of the periodic 7-point Laplacian on the rfft grid (1/mm^2)."""
    k0, k1, k2 = _fft.frequency_grids(shape, voxel_size_mm, real=True)
    eigen = np.zeros(np.broadcast_shapes(k0.shape, k1.shape, k2.shape), dtype=np.float32)
    for k, voxel in zip((k0, k1, k2), voxel_size_mm):
        eigen = eigen + (2.0 * np.cos(2.0 * np.pi * k * voxel) - 2.0) / np.float32(voxel * voxel)
    return eigen


def _periodic_laplacian(volume: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    result = np.zeros_like(volume)
    for axis, voxel in enumerate(voxel_size_mm):
        second = np.roll(volume, 1, axis=axis) + np.roll(volume, -1, axis=axis) - 2.0 * volume
        result += second / np.float32(voxel * voxel)
    return result


def laplacian_unwrap_volume(wrapped_phase: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Unwrap one 3D phase volume (radians) by the Laplacian method.

    Parameters
    ----------
    wrapped_phase : numpy.ndarray, shape (n0, n1, n2)
        Wrapped phase in radians.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.

    Returns
    -------
    numpy.ndarray of float32
        Unwrapped phase (radians), with zero mean over the volume.
    """
    phase = wrapped_phase.astype(np.float32, copy=False)
    sin_phase, cos_phase = np.sin(phase), np.cos(phase)
    laplacian_of_phase = cos_phase * _periodic_laplacian(sin_phase, voxel_size_mm)
    laplacian_of_phase -= sin_phase * _periodic_laplacian(cos_phase, voxel_size_mm)
    eigen = _laplacian_eigenvalues(phase.shape, voxel_size_mm)
    eigen[0, 0, 0] = 1.0
    spectrum = _fft.rfftn(laplacian_of_phase) / eigen
    spectrum[0, 0, 0] = 0.0
    return _fft.irfftn(spectrum, phase.shape).astype(np.float32)


def laplacian(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    *,
    mask: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> PhaseResult:
    """Laplacian unwrapping of every echo independently.

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians.
    magnitude, echo_times_s, mask
        Unused; accepted so every unwrapping method has the same signature.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.

    Returns
    -------
    PhaseResult
        ``phase``: unwrapped phase per echo, float32 (echo, n0, n1, n2), each up
        to an unknown constant; no maps.

    References
    ----------
    Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric applications. Opt Lett
    2003;28:1194-1196.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> acq = scan.acquisition
    >>> unwrapped = laplacian(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm).phase
    >>> unwrapped.shape
    (4, 32, 32, 32)
    """
    del magnitude, echo_times_s, mask
    unwrapped = np.empty(phase.shape, dtype=np.float32)
    for echo in range(phase.shape[0]):
        check_cancel(cancel)
        report(progress, echo / phase.shape[0], f"Laplacian unwrapping, echo {echo + 1}/{phase.shape[0]}")
        unwrapped[echo] = laplacian_unwrap_volume(phase[echo], voxel_size_mm)
    report(progress, 1.0, "Laplacian unwrapping done")
    return PhaseResult(unwrapped)
