"""The unit dipole kernel in k-space and forward field simulation.

The relative field shift of a susceptibility distribution is
``delta = F^-1[ D(k) F(chi) ]`` with ``D(k) = 1/3 - (k.b)^2 / |k|^2``,
``b`` the unit B0 direction in array-axis coordinates and ``k`` in physical
units, so oblique B0 and anisotropic voxels need no resampling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from ..errors import QSMInputError


def unit_vector(direction: Sequence[float]) -> np.ndarray:
    """Return ``direction`` normalised to unit length (float64, shape (3,))."""
    vector = np.asarray(direction, dtype=np.float64).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise QSMInputError(
            f"B0 direction must be three finite numbers (array axes), got {direction!r}."
        )
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise QSMInputError("B0 direction is the zero vector: give a unit vector such as (0, 0, 1).")
    return vector / norm


def dipole_kernel(
    shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    real: bool = True,
) -> np.ndarray:
    """Unit dipole kernel ``D(k) = 1/3 - (k.b)^2/|k|^2`` on an FFT grid.

    Parameters
    ----------
    shape : sequence of 3 int
        Spatial shape of the (already padded) volume, array-axis order.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates; normalised here.
    real : bool
        If True return the half spectrum matching ``scipy.fft.rfftn``
        (last axis ``n // 2 + 1``), else the full spectrum.

    Returns
    -------
    numpy.ndarray of float32
        The kernel, with ``D(0) = 0`` (susceptibility is then relative to
        its mean, which referencing fixes).
    """
    direction = unit_vector(b0_direction).astype(np.float32)
    grids = _fft.frequency_grids(shape, voxel_size_mm, real=real)
    # On an even-length axis the Nyquist sample stands for both +N/2 and -N/2;
    # averaging (k.b)^2 over both signs drops its cross terms. Without this an
    # oblique kernel is not symmetric and chi would depend on the array's
    # orientation (flipping an axis would change the result).
    regular_part = np.float32(0.0)
    nyquist_part = np.float32(0.0)
    for k, n, b in zip(grids, shape, direction):
        is_nyquist = np.zeros(k.shape, dtype=bool)
        if int(n) % 2 == 0:
            is_nyquist = np.abs(k) == np.abs(k).max()
        regular_part = regular_part + np.where(is_nyquist, 0.0, k * b).astype(np.float32)
        nyquist_part = nyquist_part + np.where(is_nyquist, (k * b) ** 2, 0.0).astype(np.float32)
    k0, k1, k2 = grids
    k_squared = k0 * k0 + k1 * k1 + k2 * k2
    k_squared[0, 0, 0] = 1.0
    kernel = np.float32(1.0 / 3.0) - (regular_part * regular_part + nyquist_part) / k_squared
    kernel[0, 0, 0] = 0.0
    return kernel.astype(np.float32, copy=False)


def forward_field(
    chi: np.ndarray,
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    pad_factor: float = 2.0,
) -> np.ndarray:
    """Field shift of a susceptibility map by k-space dipole convolution.

    Parameters
    ----------
    chi : numpy.ndarray, shape (n0, n1, n2)
        Susceptibility in any unit (ppm in gives field in ppm of B0).
    voxel_size_mm, b0_direction
        Geometry in array-axis order.
    pad_factor : float
        Zero padding factor per axis before the circular convolution.

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
        Relative field shift in the unit of ``chi``.
    """
    if chi.ndim != 3:
        raise QSMInputError(f"forward_field expects a 3D volume, got shape {chi.shape}.")
    shape = _fft.padded_shape(chi.shape, pad_factor)
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    spectrum = _fft.rfftn(_fft.pad(chi.astype(np.float32), shape))
    spectrum *= kernel
    return _fft.crop(_fft.irfftn(spectrum, shape), chi.shape).astype(np.float32)


def inversion_frame(
    mask: np.ndarray, pad_factor: float, margin_voxels: int = 4
) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Where to solve an inversion: the mask's bounding box and its padded FFT shape.

    Solving on the box around the mask (plus a margin), zero padded by
    ``pad_factor``, gives the same result as the full field of view (the
    local field is zero outside the mask) at a fraction of the cost.
    """
    box = _fft.mask_bounding_box(mask, [margin_voxels] * 3)
    box_shape = tuple(s.stop - s.start for s in box)
    return box, _fft.padded_shape(box_shape, pad_factor)


def gradient_eigenvalues(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``sum_a |E_a|^2`` for periodic forward differences on the rfft grid (1/mm^2).

    ``E_a = (exp(2 pi i k_a v_a) - 1) / v_a`` is the forward difference along
    axis ``a`` in k-space; the sum is the negated Laplacian's spectrum.
    """
    grids = _fft.frequency_grids(shape, voxel_size_mm, real=True)
    total = np.zeros(tuple(len(g.reshape(-1)) for g in grids), dtype=np.float32)
    for k, voxel in zip(grids, voxel_size_mm):
        total = total + (2.0 - 2.0 * np.cos(2.0 * np.pi * k * voxel)) / np.float32(voxel * voxel)
    return total.astype(np.float32)


def forward_gradient(volume: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Periodic forward differences along each axis, shape (3, n0, n1, n2), per mm."""
    return np.stack(
        [(np.roll(volume, -1, axis=a) - volume) / np.float32(v) for a, v in enumerate(voxel_size_mm)]
    )


def gradient_adjoint(gradients: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Adjoint of :func:`forward_gradient` (minus the backward-difference divergence)."""
    result = np.zeros(gradients.shape[1:], dtype=gradients.dtype)
    for a, v in enumerate(voxel_size_mm):
        result += (np.roll(gradients[a], 1, axis=a) - gradients[a]) / np.float32(v)
    return result
