"""SHARP / V-SHARP background field removal.

Spherical mean value (SMV) filtering removes harmonic (background) fields
inside the mask; V-SHARP (Li et al., NeuroImage 2011; Wu et al., MRM 2012)
uses large spheres in the interior and shrinking ones towards the boundary,
then undoes the largest high-pass filter by truncated deconvolution.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import _fft
from .._operators import ball_interior, sphere_kernel
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import BackgroundResult
from ..errors import QSMInputError


def default_radii_mm(voxel_size_mm: Sequence[float], max_radius_mm: float) -> list[float]:
    """Radii from ``max_radius_mm`` down to ~the largest voxel size, in voxel-sized steps (at most 8)."""
    smallest = max(float(max(voxel_size_mm)), 1.0)
    count = int(min(8, max(1, np.floor((max_radius_mm - smallest) / smallest) + 1)))
    return [float(r) for r in np.linspace(max_radius_mm, smallest, count)]


def vsharp(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    max_radius_mm: float = 12.0,
    radii_mm: Optional[Sequence[float]] = None,
    truncation: float = 0.05,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> BackgroundResult:
    """V-SHARP background field removal.

    Parameters
    ----------
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field (Hz), valid inside ``mask``.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Region where the field is known.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    max_radius_mm : float
        Largest sphere radius (mm) used in the interior.
    radii_mm : sequence of float, optional
        Explicit radii, largest first; default :func:`default_radii_mm`.
    truncation : float
        Spectral truncation threshold of the deconvolution by the largest
        high-pass kernel ``1 - S``.

    Returns
    -------
    local_field_hz : numpy.ndarray of float32
        Local field (Hz), zero outside the returned mask.
    mask : numpy.ndarray of bool
        ``mask`` eroded by the smallest radius: where the local field is valid.
    parameters : mapping
        Values chosen from the data (none for this method). The three come as a
        :class:`QSMLib.contract.BackgroundResult`.

    References
    ----------
    Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic magnetic tissue
    properties using MRI signal phase: an approach to in vivo brain iron metabolism? NeuroImage
    2011;54:2789-2807.
    Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects spatial variation in
    tissue composition. NeuroImage 2011;55:1645-1656.
    Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed sensing. Magn
    Reson Med 2012;67:137-147.

    Examples
    --------
    >>> import numpy as np
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # the local field of a paramagnetic sphere, Hz
    >>> background = np.broadcast_to(np.linspace(-20, 20, 32, dtype=np.float32)[:, None, None], (32, 32, 32))
    >>> local, valid, chosen = vsharp(scan.local_field_hz + background, scan.brain_mask, (1.0, 1.0, 1.0))
    >>> without_background = vsharp(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0)).local_field_hz
    >>> bool(np.abs(local - without_background).max() < 0.05)  # a harmonic background is removed, Hz
    True
    """
    mask = np.asarray(mask, dtype=bool)
    radii = sorted((float(r) for r in (radii_mm or default_radii_mm(voxel_size_mm, max_radius_mm))), reverse=True)
    if radii[-1] <= 0:
        raise QSMInputError(f"V-SHARP radii must be positive mm, got {radii}.")
    margin = [int(np.ceil(radii[0] / v)) + 1 for v in voxel_size_mm]
    box = _fft.mask_bounding_box(mask, margin)
    field_box = np.where(mask, total_field_hz, 0).astype(np.float32)[box]
    mask_box = mask[box]
    shape = tuple(_fft.padded_shape([n + m for n, m in zip(mask_box.shape, margin)], 1.0))
    field_spectrum = _fft.rfftn(_fft.pad(field_box, shape))
    mask_spectrum = _fft.rfftn(_fft.pad(mask_box.astype(np.float32), shape))

    combined = np.zeros(mask_box.shape, dtype=np.float32)
    assigned = np.zeros(mask_box.shape, dtype=bool)
    largest_high_pass = None
    for index, radius in enumerate(radii):
        check_cancel(cancel)
        report(progress, index / len(radii), f"V-SHARP radius {radius:.1f} mm")
        kernel = sphere_kernel(shape, voxel_size_mm, radius)
        eroded = _fft.crop(ball_interior(mask_spectrum, kernel, shape), mask_box.shape)
        high_pass = np.float32(1.0) - kernel
        if largest_high_pass is None:
            largest_high_pass = high_pass
        filtered = _fft.crop(_fft.irfftn(field_spectrum * high_pass, shape), mask_box.shape)
        new = eroded & ~assigned
        combined[new] = filtered[new]
        assigned |= eroded
    if not assigned.any():
        raise QSMInputError(
            f"The mask is too small for V-SHARP (nothing is left after eroding by {radii[-1]:.1f} mm): "
            "check the mask or use smaller radii."
        )
    report(progress, 0.9, "V-SHARP deconvolution")
    inverse = np.where(np.abs(largest_high_pass) > truncation, 1.0 / np.where(
        np.abs(largest_high_pass) > truncation, largest_high_pass, 1.0), 0.0).astype(np.float32)
    deconvolved = _fft.crop(_fft.irfftn(_fft.rfftn(_fft.pad(combined, shape)) * inverse, shape), mask_box.shape)
    local = np.zeros(mask.shape, dtype=np.float32)
    valid = np.zeros(mask.shape, dtype=bool)
    local[box] = np.where(assigned, deconvolved, 0)
    valid[box] = assigned
    report(progress, 1.0, "V-SHARP done")
    return BackgroundResult(local, valid)
