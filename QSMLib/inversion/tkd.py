"""Thresholded k-space division (Shmueli et al., MRM 2009; Wharton et al., MRM 2010)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from .._operators import inversion_frame
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import InversionResult
from ..dipole import dipole_kernel
from ..units import hz_to_ppm


def tkd(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    threshold: float = 0.19,
    pad_factor: float = 1.5,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """Susceptibility by k-space division with the kernel truncated at ``threshold``.

    Where ``|D| < threshold`` the kernel is replaced by ``sign(D) threshold``
    (so the cone is damped, not zeroed), as in Wharton et al. 2010.

    Parameters
    ----------
    local_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Local field in Hz (zero or ignored outside ``mask``).
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Region of valid field; chi is returned there.
    voxel_size_mm, b0_direction
        Geometry in array-axis order.
    b0_tesla : float
        Field strength (converts Hz to ppm).
    threshold : float
        Truncation level of ``|D|`` (0.19 in the QSM challenge comparisons).
    pad_factor : float
        Zero padding of the solve frame.

    Returns
    -------
    InversionResult
        ``chi_ppm``: susceptibility in ppm, zero outside ``mask`` (not yet referenced);
        ``parameters``: values chosen from the data (none for this method).

    References
    ----------
    Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic susceptibility mapping of
    brain tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522.
    Wharton S, Schafer A, Bowtell R. Susceptibility mapping in the human brain using threshold-based
    k-space division. Magn Reson Med 2010;63:1292-1304.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(chi_ppm=0.2)
    >>> chi = tkd(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0), b0_direction=(0.0, 0.0, 1.0),
    ...     b0_tesla=3.0).chi_ppm
    >>> inside = scan.chi_ppm > 0
    >>> contrast = chi[inside].mean() - chi[scan.brain_mask & ~inside].mean()
    >>> bool(0.12 < contrast < 0.24)  # the sphere's 0.2 ppm, within the method's bias
    True
    """
    check_cancel(cancel)
    report(progress, 0.0, "TKD inversion")
    box, shape = inversion_frame(mask, pad_factor)
    field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0)[box]
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    sign = np.where(kernel >= 0, np.float32(1), np.float32(-1))
    truncated = np.where(np.abs(kernel) < threshold, sign * np.float32(threshold), kernel)
    spectrum = _fft.rfftn(_fft.pad(field_ppm, shape)) / truncated
    spectrum[0, 0, 0] = 0.0
    chi = np.zeros(mask.shape, dtype=np.float32)
    chi[box] = _fft.crop(_fft.irfftn(spectrum, shape), field_ppm.shape)
    report(progress, 1.0, "TKD done")
    return InversionResult(np.where(mask, chi, 0).astype(np.float32))
