"""Regularisation enabled SHARP, RESHARP (Sun and Wilman, MRM 2014;71:1151), with several SMV radii.

SHARP filters the total field with the spherical mean value (SMV) high-pass
``C = I - S`` (``S`` the normalised ball): a harmonic (background) field has
``C b = 0`` wherever the ball fits inside the region where ``b`` is harmonic,
so on the mask eroded by the radius ``M_e C f = M_e C l``. SHARP undoes ``C``
by truncated division, which amplifies the field's errors near the zeros of
``C``. RESHARP instead solves the Tikhonov problem

    min_l  || M_e C (l - f) ||^2 + lambda || l ||^2

by conjugate gradients on the normal equations
``(C M_e C + lambda) l = C M_e C f``: the regularisation keeps the local
field small where the data do not determine it (the harmonic null space of
``M_e C``) instead of cutting frequencies, which keeps more of the smooth
local field.

The smooth part of the local field is where ``C`` is near zero (``C`` grows
as ``(k r)^2`` from the centre of k-space), so it is what the data determine
least and what conjugate gradients find last. Two measures address it:

- Convergence. On the validation suite's heads (exact total fields, true
  brain masks, one radius) the local-field NRMSE fell from 51.7-60.8 %
  after the 11-16 iterations that a relative residual of 1e-2 allowed to
  34.9-37.6 % when run to 1e-6 (370-880 iterations), and a smaller
  ``lambda`` kept more of it (converged at 2 mm, 1e-3 / 1e-4 / 1e-5: 40.3 /
  35.5 / 34.9 %). ``lambda`` 1e-5 and a residual of 1e-4 come within 1.3
  points of converging.
- Several radii, as V-SHARP uses them for SHARP: the data term sums
  ``|| M_r C_r (l - f) ||^2`` over balls of ``r = radius_mm`` times
  ``radius_multiples``. A larger ball constrains the smooth local field
  more (``C_r`` is larger at low frequencies) on a smaller eroded mask; the
  smallest ball sets the voxels kept. With 1, 2 and 10/3 times the radius
  the twelve suite heads measured 27.2-36.7 % (mean 30.3) against 32.9-40.6
  % (mean 36.8) with the one radius, the same voxels kept, in fewer
  iterations (69-233).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import _fft
from .._operators import conjugate_gradient
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import BackgroundResult
from ..errors import QSMInputError
from ._smv import smv_balls


def default_radius_mm(voxel_size_mm: Sequence[float]) -> float:
    """RESHARP's default SMV radius, mm: 3 voxels of the largest voxel dimension, at least 3 mm."""
    return max(3.0, 3.0 * float(max(voxel_size_mm)))


def resharp(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    radius_mm: Optional[float] = None,
    radius_multiples: Sequence[float] = (1.0, 2.0, 10.0 / 3.0),
    regularization: float = 1e-5,
    tolerance: float = 1e-4,
    max_iterations: int = 1000,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> BackgroundResult:
    """Background field removal by RESHARP.

    Parameters
    ----------
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field in Hz, valid inside ``mask``.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Region where the field is known (the brain).
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    radius_mm : float, optional
        Radius of the SMV ball, mm; the local field is valid on the mask
        eroded by the smallest ball. Default: 3 voxels of the largest voxel
        dimension, at least 3 mm.
    radius_multiples : sequence of float
        The balls' radii as multiples of ``radius_mm`` (``(1,)``: the
        original RESHARP, 11.6 against 16.0 s for a 256 x 256 x 176 head
        at 1 mm on two cores).
    regularization : float
        ``lambda`` of the Tikhonov term (dimensionless: ``C`` has unit gain
        at high frequencies). Larger shrinks the local field, most of all
        its smooth part.
    tolerance : float
        Stop conjugate gradients when the residual of the normal equations
        falls below this fraction of the right-hand side (1e-4: 69-233
        iterations on the suite's 0.7-2 mm heads with the three radii).
    max_iterations : int
        Upper bound on conjugate gradient iterations.

    Returns
    -------
    BackgroundResult
        Local field (Hz) on the eroded mask; ``parameters`` records the
        radii, ``lambda`` and the iterations used.

    References
    ----------
    Sun H, Wilman AH. Background field removal using spherical mean value
    filtering and Tikhonov regularization. Magn Reson Med 2014;71:1151-1157.
    Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain
    reflects spatial variation in tissue composition. NeuroImage
    2011;55:1645-1656 (V-SHARP: SMV balls of several radii).

    Examples
    --------
    A field harmonic inside a ball (here linear) is background and removed:

    >>> import numpy as np
    >>> grid = np.indices((40, 40, 40)).astype(np.float32) - 19.5
    >>> mask = (grid**2).sum(axis=0) < 18**2
    >>> result = resharp(3.0 * grid[0], mask, (1.0, 1.0, 1.0))
    >>> bool(np.abs(result.local_field_hz[result.mask]).max() < 0.1)  # of up to 57 Hz, to the CG tolerance
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("RESHARP: the mask is empty. Give a brain mask with at least one voxel.")
    if radius_mm is None:
        radius_mm = default_radius_mm(voxel_size_mm)
    multiples = sorted({float(m) for m in np.atleast_1d(np.asarray(radius_multiples, dtype=float))})
    if not (radius_mm > 0 and multiples and multiples[0] > 0 and regularization > 0 and tolerance > 0
            and max_iterations >= 1):
        raise QSMInputError(
            "RESHARP: radius_mm, radius_multiples, regularization and tolerance must be positive, max_iterations at "
            "least 1."
        )
    radii = [radius_mm * multiple for multiple in multiples]
    check_cancel(cancel)
    report(progress, 0.0, "RESHARP: set-up")
    # balls too large for the mask drop out (the radii ascend, so the erosions shrink); the smallest must fit
    box, shape, balls = smv_balls(mask, voxel_size_mm, radii)
    high_passes, erosions = [], []
    for ball, interior in balls:
        if not interior.any():
            break
        high_passes.append((np.float32(1.0) - ball).astype(np.float32))
        erosions.append(interior)
    del balls
    if not erosions:
        raise QSMInputError(
            f"RESHARP: nothing of the mask is left after eroding by {radii[0]:.1f} mm: check the mask or use a "
            "smaller radius_mm."
        )

    def normal(volume: np.ndarray) -> np.ndarray:
        spectrum = _fft.rfftn(volume)
        total = None
        for high_pass, interior in zip(high_passes, erosions):
            filtered = _fft.irfftn(spectrum * high_pass, shape).astype(np.float32, copy=False)
            filtered[~interior] = 0
            term = _fft.rfftn(filtered) * high_pass
            total = term if total is None else total + term
        result = _fft.irfftn(total, shape).astype(np.float32, copy=False)
        result += np.float32(regularization) * volume
        return result

    field = _fft.pad(np.where(mask, total_field_hz, 0).astype(np.float32)[box], shape)
    rhs = normal(field) - np.float32(regularization) * field
    del field
    local, iterations = conjugate_gradient(
        normal, rhs, tolerance=tolerance, max_iterations=max_iterations, cancel=cancel,
        on_iteration=lambda count: report(progress, 0.05 + 0.9 * count / max_iterations, f"RESHARP iteration {count}"),
    )
    box_shape = tuple(s.stop - s.start for s in box)
    valid = np.zeros(mask.shape, dtype=bool)
    valid[box] = _fft.crop(erosions[0], box_shape)
    local_field_hz = np.zeros(mask.shape, dtype=np.float32)
    local_field_hz[box] = _fft.crop(local, box_shape)
    local_field_hz[~valid] = 0
    report(progress, 1.0, "RESHARP done")
    return BackgroundResult(
        local_field_hz, valid,
        {"radius_mm": float(radius_mm), "radii_mm": [float(r) for r in radii[:len(erosions)]],
         "regularization": float(regularization), "iterations": int(iterations)},
    )
