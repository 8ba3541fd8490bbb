"""Closed-form L2 (Tikhonov on gradients) dipole inversion (Bilgic et al., JMRI 2014;40:181).

The regularisation is chosen from the field's noise-to-signal ratio by
default; the corner of the L-curve (Hansen, SIAM Review 1992), as Bilgic et
al. choose it, is available too: since the solution is closed form, every
candidate costs only element-wise work on the spectrum.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import _fft
from .._operators import gradient_eigenvalues, inversion_frame, mean_voxel_mm
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import InversionResult
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..units import hz_to_ppm
from ._regularization import effective_noise, measure_field

#: ``lambda = 0.003 h^2`` mm^2 (``h`` the geometric mean voxel size in mm) gave the lowest NRMSE on
#: the numerical head phantom at 1 and 2 mm; MEDI's closed-form start uses it.
DEFAULT_REGULARIZATION_PER_VOXEL = 0.003

#: The automatic ``lambda`` (mm^2) per ``h`` times the field's effective noise-to-signal ratio (mm):
#: measured on the validation suite (``benchmarks/bench_lambda.py``).
LAMBDA_PER_NOISE_RATIO = 0.2
#: The share of the measured noise that enters that ratio: L2's error is mostly its bias (the prior's
#: smoothing), so its best ``lambda`` grows with noise far more slowly than TV's (README, stop 51).
NOISE_SHARE = 0.25

#: Candidates of the L-curve search, mm^2 (log spaced).
L_CURVE_RANGE = (1e-4, 1.0)
L_CURVE_POINTS = 41


def default_regularization(voxel_size_mm: Sequence[float]) -> float:
    """``lambda`` (mm^2) for fields as noisy as the phantom's: ``0.003 h^2``, ``h`` the mean voxel size in mm."""
    return DEFAULT_REGULARIZATION_PER_VOXEL * mean_voxel_mm(voxel_size_mm) ** 2


def l_curve_corner(
    field_spectrum: np.ndarray, kernel: np.ndarray, laplacian: np.ndarray, candidates: np.ndarray
) -> float:
    """The regularisation at the L-curve's point of maximum curvature.

    For each ``lambda`` the closed-form solution ``X = D B / (D^2 + lambda L)``
    gives the data residual ``||D X - B||`` and the gradient norm
    ``||E X||`` (both by Parseval, in k-space); the corner is the maximum of
    the signed curvature of ``(log residual, log gradient norm)`` as a
    function of ``log lambda``.

    Parameters
    ----------
    field_spectrum, kernel, laplacian : numpy.ndarray
        rfft of the field, dipole kernel and ``sum |E_a|^2`` on the same grid.
    candidates : numpy.ndarray
        Increasing, log-spaced values of ``lambda``.

    Returns
    -------
    float
    """
    power = (field_spectrum.real**2 + field_spectrum.imag**2).astype(np.float32)
    d2 = kernel * kernel
    residuals, regularities = [], []
    for value in candidates:
        denominator = d2 + np.float32(value) * laplacian
        denominator[0, 0, 0] = 1.0
        # D X - B = -lambda L B / (D^2 + lambda L);  E X ~ sqrt(L) D B / (D^2 + lambda L)
        residuals.append(float(np.sum(power * (np.float32(value) * laplacian / denominator) ** 2)))
        regularities.append(float(np.sum(power * laplacian * (kernel / denominator) ** 2)))
    rho = 0.5 * np.log(np.maximum(residuals, 1e-300))
    eta = 0.5 * np.log(np.maximum(regularities, 1e-300))
    t = np.log(candidates)
    d_rho, d_eta = np.gradient(rho, t), np.gradient(eta, t)
    dd_rho, dd_eta = np.gradient(d_rho, t), np.gradient(d_eta, t)
    curvature = (d_rho * dd_eta - dd_rho * d_eta) / np.maximum((d_rho**2 + d_eta**2) ** 1.5, 1e-300)
    # the end points have one-sided derivatives: never pick them
    return float(candidates[1 + int(np.argmax(curvature[1:-1]))])


def l2(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    field_sd_hz: Optional[np.ndarray] = None,
    regularization: Union[float, str] = "auto",
    pad_factor: float = 1.5,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """Minimise ``||D chi - delta||^2 + lambda ||grad chi||^2`` in closed form.

    ``chi = F^-1[ D F(delta) / (D^2 + lambda sum_a |E_a|^2) ]``.

    Parameters
    ----------
    local_field_hz, mask, voxel_size_mm, b0_direction, b0_tesla, pad_factor
        As :func:`QSMLib.inversion.tkd.tkd`.
    field_sd_hz : numpy.ndarray, optional
        The echo fit's noise SD per voxel (Hz), one of the two noise
        estimates ``"auto"`` reads (as for ``tv``).
    regularization : float, "auto" or "l-curve"
        ``lambda`` in mm^2 (the gradient is per mm); larger is smoother.
        ``"auto"`` (default): ``0.2 h r`` with ``h`` the geometric mean
        voxel size (mm) and ``r`` the field's effective noise (``tv``'s
        model error and a quarter of its noise estimate,
        :data:`NOISE_SHARE`; ppm mm) over its RMS (ppm): scaling the field
        leaves the best ``lambda`` of a quadratic functional unchanged, so
        it follows the noise-to-signal ratio, not the noise.
        ``"l-curve"``: the L-curve corner (:func:`l_curve_corner`, 41 values
        from 1e-4 to 1): 30-360 % above the best NRMSE on the twelve suite
        heads (far too little regularisation).

    Returns
    -------
    InversionResult
        ``chi_ppm``: susceptibility in ppm, zero outside ``mask`` (not yet referenced);
        ``parameters``: ``regularization`` (mm^2), ``regularization_rule`` and, when chosen from the
        data, the noise estimates it read (ppm).

    References
    ----------
    Bilgic B, Chatnuntawech I, Fan AP, Setsompop K, Cauley SF, Wald LL, Adalsteinsson E. Fast image
    reconstruction with L2-regularization. J Magn Reson Imaging 2014;40:181-191.
    Hansen PC. Analysis of discrete ill-posed problems by means of the L-curve. SIAM Rev
    1992;34:561-580.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(chi_ppm=0.2)
    >>> chi = l2(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0), b0_direction=(0.0, 0.0, 1.0),
    ...     b0_tesla=3.0).chi_ppm
    >>> inside = scan.chi_ppm > 0
    >>> contrast = chi[inside].mean() - chi[scan.brain_mask & ~inside].mean()
    >>> bool(0.12 < contrast < 0.24)  # the sphere's 0.2 ppm, within the method's bias
    True
    """
    valid = regularization in ("auto", "l-curve") if isinstance(regularization, str) else (
        isinstance(regularization, (int, float)) and np.isfinite(regularization) and regularization > 0)
    if not valid:
        raise QSMInputError(f"L2: regularization must be a positive number, 'auto' or 'l-curve', "
                            f"not {regularization!r}.")
    check_cancel(cancel)
    report(progress, 0.0, "L2 inversion")
    field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0).astype(np.float32)
    rule, measured = "fixed", {}
    if regularization == "auto":
        measured = measure_field(field_ppm, mask, None, None if field_sd_hz is None else
                                 np.where(mask, hz_to_ppm(field_sd_hz, b0_tesla), 0))
        if not measured["field_rms_ppm"] > 0:
            raise QSMInputError("L2: the field is constant in the mask: there is nothing to invert. Check the field.")
        effective = effective_noise(NOISE_SHARE * measured["noise_ppm"], measured["field_rms_ppm"], voxel_size_mm)
        regularization = LAMBDA_PER_NOISE_RATIO * mean_voxel_mm(voxel_size_mm) * effective / measured["field_rms_ppm"]
        rule = "noise-to-signal"
    box, shape = inversion_frame(mask, pad_factor)
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    laplacian = gradient_eigenvalues(shape, voxel_size_mm)
    field_ppm = field_ppm[box]
    spectrum = _fft.rfftn(_fft.pad(field_ppm, shape))
    if regularization == "l-curve":
        report(progress, 0.2, "L2: L-curve")
        candidates = np.geomspace(*L_CURVE_RANGE, L_CURVE_POINTS)
        regularization, rule = l_curve_corner(spectrum, kernel, laplacian, candidates), "L-curve corner"
        check_cancel(cancel)
    denominator = kernel * kernel + np.float32(regularization) * laplacian
    denominator[0, 0, 0] = 1.0
    spectrum *= kernel / denominator
    chi = np.zeros(mask.shape, dtype=np.float32)
    chi[box] = _fft.crop(_fft.irfftn(spectrum, shape), field_ppm.shape)
    report(progress, 1.0, f"L2 done (lambda {float(regularization):.2g})")
    return InversionResult(np.where(mask, chi, 0).astype(np.float32),
                           {"regularization": float(regularization), "regularization_rule": rule, **measured})
