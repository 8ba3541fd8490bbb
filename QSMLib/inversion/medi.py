"""Morphology enabled dipole inversion, MEDI (Liu et al., NeuroImage 2012;59:2560; Liu et al., MRM 2013;69:467).

MEDI minimises

    ||M_G grad x||_1 + lambda ||W (exp(i D x) - exp(i phi))||_2^2

with ``x`` and ``phi`` in radians at the echo time (``x = s chi``,
``s = 2 pi gamma B0 TE``), ``M_G`` zero across edges of the magnitude image
(so they stay sharp) and one elsewhere, and ``W`` the noise weighting. The L1
term is handled by iteratively reweighted least squares inside Gauss-Newton:
each outer step linearises the complex exponential and solves the normal
equations by conjugate gradients. MERIT (model error reduction through
iterative tuning) down-weights voxels whose residual exceeds six standard
deviations after each step. MEDI+0 (Liu et al., MRM 2018;79:2795) adds
``lambda_CSF ||M_CSF (x - mean_CSF x)||^2``, pulling the lateral ventricles
to a uniform value.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import _backend, _fft
from .._morphology import ventricle_mask
from .._operators import (
    conjugate_gradient,
    data_weight,
    from_frame,
    gradient,
    gradient_adjoint,
    gradient_eigenvalues,
    inversion_frame,
    to_frame,
)
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import InversionResult
from ..dipole import dipole_kernel
from ..errors import QSMInputError
from ..units import GAMMA_BAR_HZ_PER_T, hz_to_ppm
from ._regularization import MODEL_ERROR_FRACTION as TV_MODEL_ERROR_FRACTION
from ._regularization import echo_time, edge_weight, merit_weight, tv_regularization
from .l2 import default_regularization

#: Model error of the field as a fraction of its RMS in MEDI's automatic rule: a quarter of TV's
#: (measured, ``benchmarks/bench_lambda.py --methods medi``).
MODEL_ERROR_FRACTION = TV_MODEL_ERROR_FRACTION / 4

#: Smoothing of |grad x| in the IRLS weights, rad^2/mm^2 (MEDI's ``e = 1e-6``).
_IRLS_EPSILON = 1e-6


def medi(
    local_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    magnitude: Optional[np.ndarray] = None,
    field_weight: Optional[np.ndarray] = None,
    field_sd_hz: Optional[np.ndarray] = None,
    echo_times_s: Optional[Sequence[float]] = None,
    regularization: Union[float, str] = "auto",
    echo_time_s: Optional[float] = None,
    edge_fraction: float = 0.3,
    merit: bool = True,
    csf_regularization: float = 0.0,
    initial: str = "zero",
    max_iterations: int = 10,
    tolerance: float = 0.1,
    cg_max_iterations: int = 100,
    cg_tolerance: float = 0.01,
    pad_factor: float = 1.1,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """MEDI dipole inversion (Gauss-Newton with conjugate gradients), optionally MEDI+0.

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
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2), optional
        Magnitude images for the edge mask (and for the ventricle mask of
        MEDI+0). Without it every gradient is regularised (plain TV-L1).
    field_weight : numpy.ndarray, optional
        Reliability of the field per voxel (inverse noise SD, any scale),
        MEDI's SNR weighting; scaled to mean 1 in the mask.
    field_sd_hz : numpy.ndarray, optional
        The echo fit's noise SD per voxel (Hz), for ``"auto"``.
    echo_times_s : sequence of float, optional
        The scan's echo times (s), from which the effective echo time comes.
    regularization : float or "auto"
        ``lambda``, the weight of the data term (MEDI's convention: larger
        follows the data more closely) for phases in radians at
        ``echo_time_s`` (``lambda s`` is what matters: 100 at 20 ms is
        MEDI's 500 at 4 ms, the best fixed value on the numerical head
        phantom). ``"auto"`` (default) takes the TV rule's ``lambda_TV``
        from the noise of the field
        (:func:`~QSMLib.inversion._regularization.tv_regularization`) and
        converts it: for small phase errors MEDI's functional is
        ``2 lambda s^2`` times TV's with ``lambda_TV = 1 / (2 lambda s)``.
        The rule's model-error term is a quarter of TV's
        (:data:`MODEL_ERROR_FRACTION`): from exact local fields MEDI's best
        data weight was 4 times the converted one on all five suite heads
        measured, with noise it was the converted one.
    echo_time_s : float, optional
        Echo time (s) at which field and model are compared as phase.
        Default: the scan's effective echo time
        (:func:`~QSMLib.inversion._regularization.effective_echo_time`),
        20 ms when no echo times are known.
    edge_fraction : float
        Share of magnitude gradient components treated as edges (not
        regularised); MEDI's default.
    merit : bool
        Down-weight voxels with residuals beyond 6 SD after each Gauss-Newton
        step (MERIT).
    csf_regularization : float
        ``lambda_CSF`` of MEDI+0 (100 in the paper); 0 switches it off. Needs
        multi-echo ``magnitude`` to find the lateral ventricles (see
        :func:`QSMLib._morphology.ventricle_mask`).
    initial : {"zero", "l2"}
        Starting point: ``"zero"`` is MEDI's own. ``"l2"`` starts from the
        closed-form L2 solution (:func:`QSMLib.inversion.l2.l2` defaults),
        which converges in fewer conjugate gradient iterations when the local
        field is clean (NRMSE 11.5 % instead of 14 % with 50 iterations per
        step on the phantom) but carries the smooth errors of an imperfect
        background removal into the result (67 % instead of 43 % after the
        pipeline's V-SHARP at 1.5 mm).
    max_iterations : int
        Upper bound on Gauss-Newton steps (MEDI: 10).
    tolerance : float
        Stop when ``||dx|| / ||x||`` falls below it (MEDI: 0.1).
    cg_max_iterations, cg_tolerance : int, float
        Conjugate gradient limits per Gauss-Newton step (MEDI: 100, 0.01).
    pad_factor : float
        Zero padding of the solve frame (the mask's bounding box) per axis.

    Returns
    -------
    InversionResult
        ``chi_ppm``: susceptibility in ppm, zero outside ``mask`` (not yet referenced);
        ``parameters``: values chosen from the data (none for this method).

    References
    ----------
    Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for quantitative
    susceptibility mapping using structural consistency between the magnitude image and the
    susceptibility map. NeuroImage 2012;59:2560-2568.
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation of the magnetic
    field to source relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476.
    Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: morphology enabled dipole inversion with
    automatic uniform cerebrospinal fluid zero reference for quantitative susceptibility mapping.
    Magn Reson Med 2018;79:2795-2803.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(chi_ppm=0.2)
    >>> chi = medi(scan.local_field_hz, scan.brain_mask, (1.0, 1.0, 1.0), b0_direction=(0.0, 0.0, 1.0),
    ...     b0_tesla=3.0).chi_ppm
    >>> inside = scan.chi_ppm > 0
    >>> contrast = chi[inside].mean() - chi[scan.brain_mask & ~inside].mean()
    >>> bool(0.12 < contrast < 0.24)  # the sphere's 0.2 ppm, within the method's bias
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("MEDI: the mask is empty, so there is no field to invert. Check the mask.")
    echo_time_s, echo_time_rule = echo_time(echo_time_s, echo_times_s, magnitude, mask)
    scale = 2.0 * np.pi * GAMMA_BAR_HZ_PER_T * float(b0_tesla) * 1e-6 * float(echo_time_s)
    chosen: dict = {"echo_time_s": echo_time_s, "echo_time_rule": echo_time_rule}
    if isinstance(regularization, str):
        field_ppm = np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0).astype(np.float32)
        tv_lambda, rule = tv_regularization(
            regularization, field_ppm, mask, data_weight(mask, field_weight), voxel_size_mm, "MEDI",
            None if field_sd_hz is None else hz_to_ppm(field_sd_hz, b0_tesla), MODEL_ERROR_FRACTION)
        regularization = 1.0 / (2.0 * tv_lambda * scale)
        chosen.update(rule, regularization=regularization, tv_equivalent_regularization=tv_lambda)
    else:
        chosen.update(regularization=float(regularization), regularization_rule="fixed")
    for name, value in (("regularization", regularization), ("echo_time_s", echo_time_s),
                        ("pad_factor", pad_factor)):
        if not value > 0:
            raise QSMInputError(f"MEDI: {name} must be positive, got {value!r}.")
    if not 0 <= edge_fraction < 1:
        raise QSMInputError(f"MEDI: edge_fraction must lie in [0, 1), got {edge_fraction!r}.")
    if csf_regularization < 0:
        raise QSMInputError(f"MEDI: csf_regularization must be 0 (off) or positive, got {csf_regularization!r}.")
    if initial not in ("l2", "zero"):
        raise QSMInputError(f"MEDI: initial must be 'l2' or 'zero', got {initial!r}.")
    check_cancel(cancel)
    report(progress, 0.0, "MEDI: weights")
    box, shape = inversion_frame(mask, pad_factor)
    phase = to_frame(np.where(mask, hz_to_ppm(local_field_hz, b0_tesla), 0), box, shape) * np.float32(scale)
    frame_mask = to_frame(mask.astype(np.float32), box, shape) > 0
    weight = to_frame(data_weight(mask, field_weight), box, shape)
    if magnitude is None:
        edges = np.ones((3, *shape), dtype=np.float32)
    else:
        edges = np.stack([to_frame(e, box, shape) for e in edge_weight(magnitude, mask, voxel_size_mm, edge_fraction)])
    csf = None
    if csf_regularization > 0:
        if magnitude is None:
            raise QSMInputError("MEDI+0 (csf_regularization > 0) needs the multi-echo magnitude to find the "
                                "ventricles; give it or set csf_regularization to 0.")

        csf = to_frame(ventricle_mask(magnitude, mask, voxel_size_mm).astype(np.float32), box, shape) > 0
        if not csf.any():
            raise QSMInputError("MEDI+0 found no ventricle voxels: set csf_regularization to 0.")
    kernel = dipole_kernel(shape, voxel_size_mm, b0_direction)
    data_factor = np.float32(2.0 * regularization)

    def convolve(volume: np.ndarray) -> np.ndarray:
        return _fft.irfftn(_fft.rfftn(volume) * kernel, shape).astype(np.float32, copy=False)

    def regulariser(volume: np.ndarray, irls: np.ndarray) -> np.ndarray:
        result = gradient_adjoint(irls * gradient(volume, voxel_size_mm), voxel_size_mm)
        if csf is not None:
            # M (x - mean_M x) is a symmetric projection: its own normal operator
            result += np.float32(csf_regularization) * np.where(csf, volume - np.float32(volume[csf].mean()), 0)
        return result

    if initial == "l2":
        laplacian = gradient_eigenvalues(shape, voxel_size_mm)
        denominator = kernel * kernel + np.float32(default_regularization(voxel_size_mm)) * laplacian
        denominator[0, 0, 0] = 1.0
        x = _fft.irfftn(_fft.rfftn(phase) * (kernel / denominator), shape).astype(np.float32)
        x[~frame_mask] = 0
        del denominator, laplacian
    else:
        x = np.zeros(shape, dtype=np.float32)
    grad = np.empty((3, *shape), dtype=np.float32)
    for iteration in range(max_iterations):
        check_cancel(cancel)
        gradient(x, voxel_size_mm, out=grad)
        grad *= edges
        irls = edges * edges / np.sqrt(grad * grad + np.float32(_IRLS_EPSILON))
        weight_squared = weight * weight
        rhs = regulariser(x, irls)
        rhs += data_factor * convolve(weight_squared * np.sin(convolve(x) - phase))
        rhs *= -1
        step, cg_iterations = conjugate_gradient(
            lambda v, irls=irls, weight_squared=weight_squared: (
                regulariser(v, irls) + data_factor * convolve(weight_squared * convolve(v))
            ),
            rhs, tolerance=cg_tolerance, max_iterations=cg_max_iterations, cancel=cancel,
            on_iteration=lambda count, done=iteration: report(
                progress, (done + count / cg_max_iterations) / max_iterations,
                f"MEDI Gauss-Newton step {done + 1}, CG iteration {count}"),
        )
        x += step
        ratio = _backend.norm(step) / max(_backend.norm(x), 1e-12)
        if merit:
            weight = _merit(weight, convolve(x), phase, frame_mask)
        report(progress, (iteration + 1) / max_iterations,
               f"MEDI Gauss-Newton step {iteration + 1} ({cg_iterations} CG iterations), update {ratio:.2f}")
        if ratio < tolerance:
            break
    report(progress, 1.0, "MEDI done")
    return InversionResult(from_frame(x / np.float32(scale), box, mask), chosen)


def _merit(weight: np.ndarray, model: np.ndarray, phase: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MERIT on the complex residual with MEDI's factor 6, then the weight rescaled to mean 1."""
    updated, _ = merit_weight(weight, weight * (np.exp(1j * model) - np.exp(1j * phase)), mask, 6.0)
    mean = float(updated[mask].mean())
    return (updated / np.float32(mean)).astype(np.float32) if mean > 0 else weight
