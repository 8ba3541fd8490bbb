"""Total-variation regularised dipole inversion by ADMM.

Linear data term as in Bilgic et al., MRM 2014 and FANSI (Milovic et al.,
MRM 2018): every sub-problem is diagonal in k-space or a pointwise shrinkage,
so one iteration costs one forward and one inverse real FFT.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..units import hz_to_ppm
from .kernel import (
    dipole_kernel,
    forward_gradient,
    gradient_adjoint,
    gradient_eigenvalues,
    inversion_frame,
)


def shrink_isotropic(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Isotropic soft thresholding of a (3, ...) vector field: the prox of ``threshold * ||v||_2``."""
    norm = np.sqrt((vectors * vectors).sum(axis=0))
    scale = np.maximum(norm - np.float32(threshold), 0) / np.maximum(norm, np.float32(1e-12))
    return (vectors * scale).astype(np.float32)


def tv(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    regularization: float = 4e-4,
    penalty: float | None = None,
    max_iterations: int = 100,
    tolerance: float = 1e-2,
    pad_factor: float = 1.3,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Minimise ``1/2 ||D chi - delta||^2 + lambda ||grad chi||_1`` (isotropic TV) by ADMM.

    Parameters
    ----------
    local_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Local field in Hz.
    mask : numpy.ndarray of bool
        Region of valid field.
    voxel_size_mm, b0_direction
        Geometry in array-axis order.
    b0_tesla : float
        Field strength.
    regularization : float
        ``lambda`` (ppm mm); larger gives flatter maps.
    penalty : float, optional
        ADMM penalty ``rho``; default ``100 * lambda`` (FANSI's choice).
    max_iterations : int
        Upper bound on ADMM iterations.
    tolerance : float
        Stop when the relative change of chi between iterations falls below.
    pad_factor : float
        Zero padding of the solve frame around the mask.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility in ppm, zero outside ``mask``.
    """
    rho = np.float32(100.0 * regularization if penalty is None else penalty)
    box, shape = inversion_frame(mask, pad_factor)
    field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0)[box]
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    data_term = _fft.rfftn(_fft.pad(field_ppm, shape)) * kernel
    denominator = kernel * kernel + rho * gradient_eigenvalues(shape, voxel_size_mm)
    denominator[0, 0, 0] = 1.0
    inverse_denominator = (1.0 / denominator).astype(np.float32)
    del denominator

    chi = np.zeros(shape, dtype=np.float32)
    auxiliary = np.zeros((3, *shape), dtype=np.float32)
    dual = np.zeros((3, *shape), dtype=np.float32)
    for iteration in range(max_iterations):
        check_cancel(cancel)
        spectrum = data_term + rho * _fft.rfftn(gradient_adjoint(auxiliary - dual, voxel_size_mm))
        spectrum *= inverse_denominator
        new_chi = _fft.irfftn(spectrum, shape).astype(np.float32)
        change = float(np.linalg.norm(new_chi - chi) / max(np.linalg.norm(new_chi), 1e-12))
        chi = new_chi
        gradient = forward_gradient(chi, voxel_size_mm)
        auxiliary = shrink_isotropic(gradient + dual, float(regularization / rho))
        dual += gradient - auxiliary
        report(progress, (iteration + 1) / max_iterations, f"TV iteration {iteration + 1}, change {change:.2e}")
        if change < tolerance:
            break
    result = np.zeros(mask.shape, dtype=np.float32)
    result[box] = _fft.crop(chi, field_ppm.shape)
    report(progress, 1.0, "TV done")
    return np.where(mask, result, 0).astype(np.float32)
