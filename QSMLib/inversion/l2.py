"""Closed-form L2 (Tikhonov on gradients) dipole inversion (Bilgic et al., MRM 2014)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..units import hz_to_ppm
from .kernel import dipole_kernel, gradient_eigenvalues, inversion_frame


def l2(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    regularization: float = 0.03,
    pad_factor: float = 1.5,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Minimise ``||D chi - delta||^2 + lambda ||grad chi||^2`` in closed form.

    ``chi = F^-1[ D F(delta) / (D^2 + lambda sum_a |E_a|^2) ]``.

    Parameters
    ----------
    local_field_hz, mask, voxel_size_mm, b0_direction, b0_tesla, pad_factor
        As :func:`QSMLib.inversion.tkd.tkd`.
    regularization : float
        ``lambda`` in mm^2 (the gradient is per mm); larger is smoother.

    Returns
    -------
    numpy.ndarray of float32
        Susceptibility in ppm, zero outside ``mask``.
    """
    check_cancel(cancel)
    report(progress, 0.0, "L2 inversion")
    box, shape = inversion_frame(mask, pad_factor)
    field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0)[box]
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    denominator = kernel * kernel + np.float32(regularization) * gradient_eigenvalues(shape, voxel_size_mm)
    denominator[0, 0, 0] = 1.0
    spectrum = _fft.rfftn(_fft.pad(field_ppm, shape)) * (kernel / denominator)
    chi = np.zeros(mask.shape, dtype=np.float32)
    chi[box] = _fft.crop(_fft.irfftn(spectrum, shape), field_ppm.shape)
    report(progress, 1.0, "L2 done")
    return np.where(mask, chi, 0).astype(np.float32)
