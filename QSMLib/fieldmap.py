"""Echo combination: unwrapped multi-echo phase -> total field in Hz."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._parallel import for_each_slab
from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .contract import FieldMapResult, Method
from .errors import QSMInputError


def weighted_linear(
    unwrapped_phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    intercept: bool = True,
    mask: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> FieldMapResult:
    """Weighted least-squares fit of phase against echo time.

    Fits ``phi_n = phi_0 + 2 pi f TE_n`` per voxel with weights
    ``|S_n|^2`` (inverse phase-noise variance, since sigma_phi ~ sigma/|S|).
    Without an intercept the fit goes through the origin with weights
    ``|S_n|^2 TE_n^2`` (valid once phase offsets are removed).

    Parameters
    ----------
    unwrapped_phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Unwrapped phase in radians.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude (any scale).
    echo_times_s : sequence of float
        Echo times in seconds.
    intercept : bool
        Fit a per-voxel phase offset too (needs at least 2 echoes). A single
        echo is always fitted through the origin.

    Returns
    -------
    total_field_hz : numpy.ndarray of float32, shape (n0, n1, n2)
        Frequency offset in Hz.
    maps : dict
        ``fit_residual_rad``: RMS weighted residual (radians) per voxel;
        ``field_sd_hz``: noise SD of the field per voxel (Hz), from the
        residuals (with at least one degree of freedom left);
        ``field_weight``: relative reliability in [0, 1] (proportional to the
        inverse standard deviation of the fitted field, 1 at the 99th
        percentile inside ``mask`` or the volume). (The two come as a
        :class:`QSMLib.contract.FieldMapResult`.)

    References
    ----------
    Wu B, Li W, Avram AV, Gho SM, Liu C. Fast and tissue-optimized mapping of magnetic susceptibility
    and T2* with multi-echo and multi-shot spirals. NeuroImage 2012;59:297-305.
    QSM Consensus Organization Committee. Recommended implementation of quantitative susceptibility
    mapping for clinical research in the brain: a consensus of the ISMRM electro-magnetic tissue
    properties study group. Magn Reson Med 2024;91:1834-1862.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> from QSMLib.phase import mcpc3ds
    >>> from QSMLib.unwrap import romeo
    >>> acq = scan.acquisition
    >>> phase = romeo(mcpc3ds(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm).phase,
    ...               acq.magnitude, acq.echo_times_s, acq.voxel_size_mm).phase
    >>> field_hz, maps = weighted_linear(phase, acq.magnitude, acq.echo_times_s, intercept=False)
    >>> error = (field_hz - scan.local_field_hz)[scan.brain_mask]
    >>> bool(abs(error).max() < 0.5), sorted(maps)
    (True, ['field_sd_hz', 'field_weight', 'fit_residual_rad'])
    """
    del progress
    check_cancel(cancel)
    times = [float(t) for t in np.asarray(echo_times_s, dtype=np.float64).reshape(-1)]
    if len(times) != unwrapped_phase.shape[0]:
        raise QSMInputError(
            f"{len(times)} echo times for {unwrapped_phase.shape[0]} echoes in the phase."
        )
    fit_intercept = intercept and len(times) >= 2
    shape = unwrapped_phase.shape[1:]
    slope, residual_rms = np.empty(shape, np.float32), np.empty(shape, np.float32)
    information, residual_sum = np.empty(shape, np.float32), np.empty(shape, np.float32)

    def fit_slab(slab: slice) -> None:
        # Weighted sums accumulated one echo at a time: no (echo, ...) temporaries.
        s0, s1, s2, y0, y1 = (np.zeros(slope[slab].shape, dtype=np.float32) for _ in range(5))
        for echo, te in enumerate(times):
            weight = np.square(magnitude[echo, slab], dtype=np.float32)
            phase = unwrapped_phase[echo, slab]
            s0 += weight
            s1 += weight * np.float32(te)
            s2 += weight * np.float32(te * te)
            y0 += weight * phase
            y1 += weight * np.float32(te) * phase
        if fit_intercept:
            determinant = s0 * s2 - s1 * s1
            safe = determinant > 1e-12 * np.maximum(s0 * s2, 1e-30)
            determinant = np.where(safe, determinant, 1.0)
            slope[slab] = np.where(safe, (s0 * y1 - s1 * y0) / determinant, 0.0)
            offset = np.where(safe, (s2 * y0 - s1 * y1) / determinant, 0.0).astype(np.float32)
            # Var(slope) = s0 / det for unit noise per weight: information = det / s0.
            information[slab] = np.where(safe, determinant / np.maximum(s0, 1e-30), 0.0)
        else:
            safe = s2 > 0
            slope[slab] = np.where(safe, y1 / np.where(safe, s2, 1.0), 0.0)
            offset = np.zeros_like(slope[slab])
            information[slab] = s2
        slab_sum = np.zeros(offset.shape, dtype=np.float32)
        for echo, te in enumerate(times):
            residual = unwrapped_phase[echo, slab] - offset - slope[slab] * np.float32(te)
            slab_sum += np.square(magnitude[echo, slab], dtype=np.float32) * residual * residual
        residual_sum[slab] = slab_sum
        residual_rms[slab] = np.sqrt(slab_sum / np.maximum(s0, 1e-30))

    for_each_slab(fit_slab, shape[0], shape[1] * shape[2])
    return FieldMapResult((slope / np.float32(2.0 * np.pi)).astype(np.float32), {
        "fit_residual_rad": residual_rms,
        "field_weight": _normalised_weight(np.sqrt(information), mask),
        **_field_sd(information, residual_sum, len(times) - (2 if fit_intercept else 1), mask),
    })


def _field_sd(
    information: np.ndarray, residual_sum: np.ndarray, degrees_of_freedom: int, mask: np.ndarray | None
) -> dict[str, np.ndarray]:
    """``field_sd_hz``: the fitted field's noise SD per voxel, from the fit's own residuals.

    With complex noise of SD ``sigma`` (real and imaginary parts), the
    weighted residual sum ``sum |S_n|^2 r_n^2`` of a voxel is ``sigma^2``
    times a chi-square variable with ``echoes - parameters`` degrees of
    freedom; its median over the tissue (voxels with a mask, or with at
    least a quarter of the best reliability) divided by that distribution's
    median estimates ``sigma^2`` robustly, whatever the spatial correlation
    of the noise. The field's SD is then ``sigma / (2 pi sqrt(information))``
    Hz (0 where the fit has no information). Nothing is returned when the
    fit leaves no degree of freedom.
    """
    if degrees_of_freedom < 1:
        return {}
    root = np.sqrt(np.maximum(information, 0)).astype(np.float32)
    if mask is not None and np.any(mask):
        region = np.asarray(mask, dtype=bool) & (root > 0)
    else:
        positive = root[root > 0]
        region = root >= 0.25 * float(np.percentile(positive, 99)) if positive.size else root > 0
    if not region.any():
        return {}
    k = float(degrees_of_freedom)
    # Wilson-Hilferty: the median of a chi-square with k degrees of freedom
    chi_square_median = k * (1.0 - 2.0 / (9.0 * k)) ** 3
    sigma = float(np.sqrt(np.median(residual_sum[region]) / chi_square_median))
    sd = np.where(root > 0, np.float32(sigma / (2.0 * np.pi)) / np.maximum(root, np.float32(1e-30)), 0)
    return {"field_sd_hz": sd.astype(np.float32)}


def _normalised_weight(inverse_sd: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    region = inverse_sd[mask] if mask is not None and mask.any() else inverse_sd[inverse_sd > 0]
    scale = float(np.percentile(region, 99)) if region.size else 1.0
    return np.clip(inverse_sd / max(scale, 1e-30), 0.0, 1.0).astype(np.float32)


def nonlinear_complex(
    unwrapped_phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    intercept: bool = True,
    max_iterations: int = 20,
    tolerance_hz: float = 1e-3,
    mask: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> FieldMapResult:
    """Nonlinear fit of the complex signal: ``S_n = |S_n| exp(i (phi_0 + 2 pi f TE_n))``.

    Minimises ``sum_n |S_n - |S_n| exp(i (phi_0 + 2 pi f TE_n))|^2`` per voxel
    by Gauss-Newton, started from :func:`weighted_linear` on the unwrapped
    phase (so it stays on the unwrapped branch). Each step is a
    ``|S_n|^2``-weighted least-squares fit of ``sin(r_n)``, ``r_n`` the phase
    residual: unlike the linear fit, an echo whose noise wrapped the phase
    (``|r_n|`` near pi) pulls little, which makes the fit robust in low-signal
    echoes (Liu et al., MEDI toolbox ``Fit_ppm_complex``; Kressler et al.,
    IEEE TMI 2010).

    Parameters
    ----------
    unwrapped_phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Unwrapped phase in radians.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude (any scale).
    echo_times_s : sequence of float
        Echo times in seconds.
    intercept : bool
        Fit the phase offset ``phi_0`` too (needs 2+ echoes); without, the
        fit goes through the origin (valid after offset removal).
    max_iterations : int
        Gauss-Newton iterations at most.
    tolerance_hz : float
        A voxel stops iterating once its field changes by less than this, Hz.
    mask : numpy.ndarray of bool, optional
        Region whose 99th percentile scales ``field_weight``.

    Returns
    -------
    total_field_hz : numpy.ndarray of float32, shape (n0, n1, n2)
        Frequency offset in Hz.
    maps : dict
        ``fit_residual_rad``: RMS of the ``|S|^2``-weighted wrapped phase
        residual (radians): high where the single-frequency model fails
        (noise, flow, fat, unwrapping errors); ``field_weight``: relative
        reliability in [0, 1] (inverse standard deviation of the fitted field
        for unit phase noise per ``1/|S|``, 1 at the 99th percentile). (The two
        come as a :class:`QSMLib.contract.FieldMapResult`.)

    References
    ----------
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation of the magnetic
    field to source relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476.
    Kressler B, de Rochefort L, Liu T, Spincemaille P, Jiang Q, Wang Y. Nonlinear regularization for
    per voxel estimation of magnetic susceptibility distributions from MRI field maps. IEEE Trans Med
    Imaging 2010;29:273-281.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> acq = scan.acquisition
    >>> field_hz, maps = nonlinear_complex(acq.phase, acq.magnitude, acq.echo_times_s)
    >>> error = (field_hz - scan.local_field_hz)[scan.brain_mask]
    >>> bool(abs(error).max() < 0.5)
    True
    """
    field_hz, _ = weighted_linear(unwrapped_phase, magnitude, echo_times_s, intercept=intercept, cancel=cancel)
    times = [float(t) for t in np.asarray(echo_times_s, dtype=np.float64).reshape(-1)]
    with_offset = intercept and len(times) >= 2
    two_pi = np.float32(2.0 * np.pi)
    shape = unwrapped_phase.shape[1:]
    phases = [np.asarray(unwrapped_phase[echo], dtype=np.float32).ravel() for echo in range(len(times))]
    magnitudes = [np.asarray(magnitude[echo], dtype=np.float32).ravel() for echo in range(len(times))]
    slope = field_hz.ravel() * two_pi
    # Weighted sums accumulated one echo at a time: no (echo, ...) temporaries.
    s0, s1, s2, y0 = (np.zeros(slope.shape, dtype=np.float32) for _ in range(4))
    for te, phase, amplitude in zip(times, phases, magnitudes):
        weight = np.square(amplitude)
        s0 += weight
        s1 += weight * np.float32(te)
        s2 += weight * np.float32(te * te)
        y0 += weight * phase
    if with_offset:
        determinant = s0 * s2 - s1 * s1
        solvable = determinant > np.float32(1e-12) * np.maximum(s0 * s2, np.float32(1e-30))
        offset = np.where(solvable, (y0 - s1 * slope) / np.maximum(s0, np.float32(1e-30)), 0.0).astype(np.float32)
        information = np.where(solvable, determinant / np.maximum(s0, np.float32(1e-30)), 0.0)
    else:
        solvable = s2 > 0
        offset = np.zeros_like(slope)
        information = s2
    del y0
    active = np.flatnonzero(solvable)
    tolerance = np.float32(tolerance_hz) * two_pi
    for iteration in range(int(max_iterations)):
        if active.size == 0:
            break
        check_cancel(cancel)
        report(progress, iteration / max_iterations, f"Nonlinear field fit, iteration {iteration + 1}")
        g0 = np.zeros(active.size, dtype=np.float32)
        g1 = np.zeros(active.size, dtype=np.float32)
        offset_active, slope_active = offset[active], slope[active]
        for te, phase, amplitude in zip(times, phases, magnitudes):
            pull = np.sin(phase[active] - offset_active - slope_active * np.float32(te))
            pull *= np.square(amplitude[active])
            g0 += pull
            g1 += pull * np.float32(te)
        if with_offset:
            a0, a1, a2 = s0[active], s1[active], s2[active]
            det = a0 * a2 - a1 * a1
            step_slope = (a0 * g1 - a1 * g0) / det
            offset[active] += (a2 * g0 - a1 * g1) / det
        else:
            step_slope = g1 / s2[active]
        slope[active] += step_slope
        active = active[np.abs(step_slope) > tolerance]
    report(progress, 1.0, "Nonlinear field fit done")
    residual_sum = np.zeros(slope.shape, dtype=np.float32)
    for te, phase, amplitude in zip(times, phases, magnitudes):
        residual = phase - offset - slope * np.float32(te)
        residual = (residual + np.float32(np.pi)) % two_pi - np.float32(np.pi)
        residual_sum += np.square(amplitude) * residual * residual
    residual_rms = np.sqrt(residual_sum / np.maximum(s0, np.float32(1e-30)))
    return FieldMapResult((slope / two_pi).reshape(shape).astype(np.float32), {
        "fit_residual_rad": residual_rms.reshape(shape).astype(np.float32),
        "field_weight": _normalised_weight(np.sqrt(information).reshape(shape), mask),
        **_field_sd(information.reshape(shape), residual_sum.reshape(shape), len(times) - (2 if with_offset else 1),
                    mask),
    })


def per_echo_fields(unwrapped_phase: np.ndarray, echo_times_s: Sequence[float]) -> np.ndarray:
    """Field in Hz of each echo on its own, ``phi_n / (2 pi TE_n)``, shape (echo, n0, n1, n2)."""
    times = np.asarray(echo_times_s, dtype=np.float32).reshape(-1, 1, 1, 1)
    return (unwrapped_phase / (np.float32(2.0 * np.pi) * times)).astype(np.float32)


#: Echo-combination methods by registry name: ``method(unwrapped_phase,
#: magnitude, echo_times_s, *, progress=None, cancel=None, **params)`` ->
#: ``(field_hz, dict of maps)`` with at least ``field_weight``.
#: Echo fits by registry name; both accept the brain mask when one is known (never a user parameter).
METHODS = {
    "weighted_linear": Method(weighted_linear, inputs=("mask",)),
    "nonlinear": Method(nonlinear_complex, inputs=("mask",)),
}
