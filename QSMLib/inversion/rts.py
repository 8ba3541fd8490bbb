"""Rapid two-step dipole inversion (Kames, Wiggermann and Rauscher, NeuroImage 2018;167:276).

Step 1 solves the well-conditioned part of k-space (``|D| > delta``)
directly: a limited number of LSMR iterations on the diagonal system
``D X = F(delta)``, which act as a smooth polynomial filter instead of a
hard division. The result, restricted to the mask, fixes the
well-conditioned frequencies.

Step 2 fills the ill-conditioned cone with the anisotropic total variation
prior: ``min_x 1/2 ||M_wc F(x - x1)||^2 + lambda ||grad x||_1`` by ADMM, where
every sub-problem is diagonal in k-space or a soft threshold, and the
penalty grows when the primal residual stalls (the paper's continuation).
The paper keeps the well-conditioned frequencies practically fixed
(``lambda = 1e-5``, its ``mu = 1e5``); here ``lambda`` follows the field's
noise, so that TV also smooths the noise step 1 passes through.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import scipy.sparse.linalg

from .. import _backend, _fft
from .._operators import from_frame, gradient, gradient_adjoint, gradient_eigenvalues, inversion_frame, to_frame
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import InversionResult
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..units import hz_to_ppm
from ._regularization import tv_regularization

#: The automatic ``lambda`` (ppm mm) of step 2 per effective noise of the field (ppm mm,
#: :func:`~QSMLib.inversion._regularization.effective_noise`), measured on the validation suite (README).
RTS_LAMBDA_PER_NOISE = 1.0


def _soft_threshold_in_place(values: np.ndarray, threshold: float, work: np.ndarray) -> None:
    np.abs(values, out=work)
    np.maximum(work, np.float32(1e-12), out=work)
    np.divide(np.float32(threshold), work, out=work)
    np.subtract(np.float32(1), work, out=work)
    np.maximum(work, 0, out=work)
    values *= work


def rts(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    field_sd_hz: Optional[np.ndarray] = None,
    regularization: Union[float, str] = "auto",
    delta: float = 0.15,
    lsmr_iterations: int = 25,
    penalty: float = 10.0,
    penalty_growth: float = 5.0,
    stall_ratio: float = 0.7,
    max_iterations: int = 20,
    tolerance: float = 1e-2,
    pad_factor: float = 1.3,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """Rapid two-step (RTS) dipole inversion with a sparsity prior.

    Parameters
    ----------
    local_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Local field in Hz (ignored outside ``mask``).
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where the local field is valid.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates.
    b0_tesla : float
        Field strength in tesla.
    field_sd_hz : numpy.ndarray, optional
        The echo fit's noise SD per voxel (Hz), for the automatic ``lambda``.
    regularization : float or "auto"
        ``lambda`` of step 2 (ppm mm): the weight of the TV prior against
        keeping the well-conditioned frequencies at their step-1 values.
        ``"auto"`` (default): ``RTS_LAMBDA_PER_NOISE`` times the field's
        effective noise, as the TV rule measures it
        (:func:`~QSMLib.inversion._regularization.tv_regularization`: the
        larger of the noise in the field's finest detail and in
        ``field_sd_hz``, with a model-error floor). The paper's fixed
        ``mu = 1e5`` is ``1e-5``: noise in the measured frequencies then
        passes into chi untouched. Measured with ``python
        benchmarks/bench_lambda.py --methods rts --inputs exact,thermal``
        (the README's ``rts`` bullet under Dipole inversion): within 1.2 %
        of the best fixed lambda on six suite heads, exact or with thermal
        noise; 98.6 -> 48.3 % chi NRMSE on the SNR-20 head with thermal
        noise.
    delta : float
        ``|D|`` above which a frequency counts as well conditioned (0.15 in
        the paper).
    lsmr_iterations : int
        LSMR iterations of step 1. The paper uses 4; on the numerical head
        phantom 4 iterations under-estimate deep grey matter by 20-35 ppb
        (NRMSE 41 % at 1.5 mm, worse than TKD) and 25 halve the error
        (NRMSE 24-26 %, deep grey matter within about 11 ppb); more adds
        little.
    penalty : float
        Initial ADMM penalty ``rho`` of step 2 (1/mm^2 scale of the TV split).
    penalty_growth : float
        Factor by which ``rho`` grows when the primal residual stalls.
    stall_ratio : float
        ``rho`` grows when the primal residual falls by less than this factor.
    max_iterations : int
        Upper bound on step-2 ADMM iterations (20 in the paper).
    tolerance : float
        Stop step 2 when ``||x_k - x_(k-1)|| / ||x_k||`` falls below it.
    pad_factor : float
        Zero padding of the solve frame (the mask's bounding box) per axis.

    Returns
    -------
    InversionResult
        ``chi_ppm``: susceptibility in ppm, zero outside ``mask`` (not yet referenced);
        ``parameters``: ``regularization`` (ppm mm), ``regularization_rule`` and, when chosen from the
        data, the noise measures it came from.

    References
    ----------
    Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for susceptibility mapping with
    sparsity priors. NeuroImage 2018;167:276-283.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(chi_ppm=0.2)
    >>> chi = rts(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0), b0_direction=(0.0, 0.0, 1.0),
    ...     b0_tesla=3.0).chi_ppm
    >>> inside = scan.chi_ppm > 0
    >>> contrast = chi[inside].mean() - chi[scan.brain_mask & ~inside].mean()
    >>> bool(0.12 < contrast < 0.24)  # the sphere's 0.2 ppm, within the method's bias
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("RTS: the mask is empty, so there is no field to invert. Check the mask.")
    for name, value in (("delta", delta), ("penalty", penalty), ("pad_factor", pad_factor)):
        if not value > 0:
            raise QSMInputError(f"RTS: {name} must be positive, got {value!r}.")
    if penalty_growth <= 1 or not 0 < stall_ratio < 1 or lsmr_iterations < 1:
        raise QSMInputError(
            "RTS: penalty_growth must exceed 1, stall_ratio lie in (0, 1) and lsmr_iterations be at least 1."
        )
    check_cancel(cancel)
    report(progress, 0.0, "RTS step 1: well-conditioned k-space")
    field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0).astype(np.float32)
    regularization, chosen = tv_regularization(
        regularization, field_ppm, mask, None, voxel_size_mm, "RTS",
        None if field_sd_hz is None else np.where(mask, hz_to_ppm(field_sd_hz, b0_tesla), 0),
        lambda_per_noise=RTS_LAMBDA_PER_NOISE)
    box, shape = inversion_frame(mask, pad_factor)
    field = to_frame(field_ppm, box, shape)
    del field_ppm
    frame_mask = to_frame(mask.astype(np.float32), box, shape) > 0
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    spectrum_shape = kernel.shape

    flat_kernel = kernel.reshape(-1).astype(np.float64)
    operator = scipy.sparse.linalg.LinearOperator(
        (flat_kernel.size, flat_kernel.size), dtype=np.complex128,
        matvec=lambda v: flat_kernel * v.reshape(-1), rmatvec=lambda v: flat_kernel * v.reshape(-1),
    )
    solution = scipy.sparse.linalg.lsmr(
        operator, _fft.rfftn(field).reshape(-1).astype(np.complex128), atol=0, btol=0,
        maxiter=int(lsmr_iterations),
    )[0]
    x = _fft.irfftn(solution.reshape(spectrum_shape).astype(np.complex64), shape).astype(np.float32)
    del solution
    x[~frame_mask] = 0
    check_cancel(cancel)

    # the objective divided by lambda: weight 1 / lambda on the data, 1 on the prior
    well_conditioned = np.where(np.abs(kernel) > delta, np.float32(1.0 / regularization), np.float32(0))
    del kernel
    laplacian = gradient_eigenvalues(shape, voxel_size_mm)
    rho = float(penalty)

    def system(rho_value: float) -> tuple[np.ndarray, np.ndarray]:
        # x^ = fixed_gain X1^ + gradient_gain F(grad^T (z - u)), all diagonal in k-space;
        # the DC term is undetermined (chi is relative) and kept at zero.
        denominator = well_conditioned + np.float32(rho_value) * laplacian
        inverse = np.where(denominator > 0, np.float32(1) / np.where(denominator > 0, denominator, 1), 0)
        return (well_conditioned * inverse).astype(np.float32), (np.float32(rho_value) * inverse).astype(np.float32)

    step_one = _fft.rfftn(x)
    fixed_gain, gradient_gain = system(rho)
    z = gradient(x, voxel_size_mm)
    u = np.zeros_like(z)
    grad = np.empty_like(z)
    magnitude = np.empty_like(z)
    work = np.empty(shape, dtype=np.float32)
    residual_norm = np.inf
    for iteration in range(max_iterations):
        check_cancel(cancel)
        np.subtract(z, u, out=grad)
        spectrum = _fft.rfftn(gradient_adjoint(grad, voxel_size_mm, out=work))
        spectrum *= gradient_gain
        spectrum += step_one * fixed_gain
        new_x = _fft.irfftn(spectrum, shape).astype(np.float32, copy=False)
        del spectrum
        np.subtract(new_x, x, out=work)
        change = _backend.norm(work) / max(_backend.norm(new_x), 1e-12)
        x = new_x
        report(progress, (iteration + 1) / max_iterations, f"RTS step 2 iteration {iteration + 1}, change {change:.1e}")
        # the first update reproduces x1 (z starts at grad x1): no convergence test yet
        if iteration > 0 and change < tolerance:
            break
        check_cancel(cancel)
        gradient(x, voxel_size_mm, out=grad)
        u += grad
        np.copyto(z, u)
        _soft_threshold_in_place(z, 1.0 / rho, magnitude)
        u -= z
        grad -= z
        previous, residual_norm = residual_norm, float(np.sqrt((grad * grad).sum(axis=0)).sum())
        if residual_norm > stall_ratio * previous:
            rho *= penalty_growth
            # scaled duals shrink with the growth so the unscaled multiplier is unchanged
            u /= np.float32(penalty_growth)
            fixed_gain, gradient_gain = system(rho)
    report(progress, 1.0, f"RTS done (lambda {regularization:.2g})")
    return InversionResult(from_frame(x, box, mask), chosen)
