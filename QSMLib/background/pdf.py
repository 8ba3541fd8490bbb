"""Projection onto dipole fields, PDF (Liu et al., NMR Biomed 2011;24:1129).

The background field inside the mask is the field of susceptibility sources
outside it. PDF finds the outside sources ``chi_b`` whose dipole field best
matches the total field inside the mask in weighted least squares,

    min_{chi_b}  || W M (f - D P chi_b) ||^2,

(``M`` the mask, ``P`` restriction to voxels outside it, ``W`` the field
reliability), by conjugate gradients on the normal equations. The local
field is ``f - D P chi_b``. No erosion is needed: the local field is valid
on the whole mask.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import _fft
from .._morphology import erode
from .._operators import conjugate_gradient, data_weight, from_frame, to_frame
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import BackgroundResult
from ..dipole import dipole_kernel
from ..errors import QSMInputError


def pdf(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    field_weight: Optional[np.ndarray] = None,
    margin_mm: float = 20.0,
    tolerance: float = 1e-3,
    max_iterations: int = 300,
    erosion_mm: float = 0.0,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> BackgroundResult:
    """Background field removal by projection onto dipole fields.

    Parameters
    ----------
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field (Hz), valid inside ``mask``.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Region where the field is known (the brain).
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates.
    field_weight : numpy.ndarray, optional
        Reliability of the field per voxel (inverse noise SD, any scale);
        uniform when omitted.
    margin_mm : float
        Thickness of the shell of candidate background sources around the
        mask's bounding box, mm. The FFT grid is that box, unpadded: a
        source's periodic images also lie outside the mask, so they are
        background sources too.
    tolerance : float
        Stop when the normal-equation residual falls below this fraction of
        its initial value.
    max_iterations : int
        Upper bound on conjugate gradient iterations.
    erosion_mm : float
        Erode the mask by this much (mm) before fitting. PDF needs no
        erosion (0, the default, keeps every voxel); eroding keeps
        partial-volume voxels at the edge of a generous mask out of the fit.

    Returns
    -------
    local_field_hz : numpy.ndarray of float32
        Local field (Hz), zero outside the valid mask.
    mask : numpy.ndarray of bool
        ``mask``, eroded by ``erosion_mm`` when asked.
    parameters : mapping
        Values chosen from the data (none for this method). The three come as a
        :class:`QSMLib.contract.BackgroundResult`.

    References
    ----------
    Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y. A novel background
    field removal method for MRI using projection onto dipole fields (PDF). NMR Biomed
    2011;24:1129-1136.

    Examples
    --------
    >>> import numpy as np
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # the local field of a paramagnetic sphere, Hz
    >>> background = np.broadcast_to(np.linspace(-20, 20, 32, dtype=np.float32)[:, None, None], (32, 32, 32))
    >>> local, valid, chosen = pdf(scan.local_field_hz + background, scan.brain_mask, (1.0, 1.0, 1.0),
    ...                           b0_direction=(0.0, 0.0, 1.0))
    >>> without_background = pdf(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0),
    ...                          b0_direction=(0.0, 0.0, 1.0)).local_field_hz
    >>> difference = (local - without_background)[valid]
    >>> bool(np.sqrt(np.mean(difference**2)) < 0.3)  # of a background of 7 Hz RMS, to the CG tolerance
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("PDF: the mask is empty. Give a brain mask with at least one voxel.")
    if margin_mm <= 0 or tolerance <= 0 or max_iterations < 1 or erosion_mm < 0:
        raise QSMInputError(
            "PDF: margin_mm and tolerance must be positive, max_iterations at least 1, erosion_mm not negative."
        )
    check_cancel(cancel)
    report(progress, 0.0, "PDF: set-up")
    if erosion_mm > 0:
        mask = erode(mask, erosion_mm, voxel_size_mm)
        if not mask.any():
            raise QSMInputError(f"PDF: nothing of the mask is left after eroding by {erosion_mm} mm.")
    margin = [int(np.ceil(margin_mm / v)) for v in voxel_size_mm]
    extent = [s.stop - s.start for s in _fft.mask_bounding_box(mask, [0, 0, 0])]
    box = _fft.mask_bounding_box(mask, margin)
    box_shape = tuple(s.stop - s.start for s in box)
    # Where the field of view clips the box, the grid still extends by the
    # margin (the extra voxels wrap round periodically): a full shell of sources.
    shape = _fft.padded_shape([max(b, e + 2 * m) for b, e, m in zip(box_shape, extent, margin)], 1.0)
    inside = to_frame(mask.astype(np.float32), box, shape) > 0
    outside = ~inside
    weight_squared = to_frame(data_weight(mask, field_weight), box, shape) ** 2
    field = to_frame(np.where(mask, total_field_hz, 0), box, shape)
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)

    def convolve(volume: np.ndarray) -> np.ndarray:
        return _fft.irfftn(_fft.rfftn(volume) * kernel, shape).astype(np.float32, copy=False)

    def normal(sources: np.ndarray) -> np.ndarray:
        result = convolve(weight_squared * convolve(np.where(outside, sources, 0)))
        result[inside] = 0
        return result

    rhs = convolve(weight_squared * field)
    rhs[inside] = 0
    sources, _ = conjugate_gradient(
        normal, rhs, tolerance=tolerance, max_iterations=max_iterations, cancel=cancel,
        on_iteration=lambda count: report(progress, 0.95 * count / max_iterations, f"PDF iteration {count}"),
    )
    local = from_frame(field - convolve(np.where(outside, sources, 0)), box, mask)
    report(progress, 1.0, "PDF done")
    return BackgroundResult(local, mask.copy())

