"""Regularisation chosen from the data: the noise of a field map and rules that turn it into ``lambda``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _backend, _fft
from .._operators import gradient, mean_voxel_mm, root_sum_of_squares
from ..errors import QSMInputError

#: Gaussian consistency of the median absolute deviation: sigma = MAD / 0.6745.
_MAD_TO_SIGMA = 0.6744897501960817


def field_noise(field: np.ndarray, mask: np.ndarray, weight: Optional[np.ndarray] = None) -> float:
    """Standard deviation of the white noise in a field map, from its finest-scale detail.

    The 3D Haar detail of every 2x2x2 block that lies in ``mask``
    (alternating signs over the eight voxels, divided by ``sqrt(8)``) has the
    noise's standard deviation and cancels everything linear in space; its
    median absolute value over the blocks (Donoho and Johnstone's robust
    estimator) ignores the few blocks that hold an edge of the signal.

    Parameters
    ----------
    field : numpy.ndarray, shape (n0, n1, n2)
        Field map in any unit.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where the field is valid.
    weight : numpy.ndarray, optional
        Data weight ``W``: the estimate is then the noise of ``W field``,
        which is what a weighted data term sees.

    Returns
    -------
    float
        Noise standard deviation in the unit of ``field`` (0 when no whole
        block lies in the mask).

    References
    ----------
    Donoho DL, Johnstone IM. Ideal spatial adaptation by wavelet shrinkage.
    Biometrika 1994;81:425-455.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> smooth = np.indices((40, 40, 40)).sum(axis=0).astype(np.float32)
    >>> noisy = smooth + 0.3 * rng.standard_normal(smooth.shape).astype(np.float32)
    >>> round(field_noise(noisy, np.ones(smooth.shape, bool)), 1)
    0.3
    """
    values = np.asarray(field, dtype=np.float32)
    if weight is not None:
        values = values * np.asarray(weight, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    even = [n - n % 2 for n in values.shape]
    values = values[: even[0], : even[1], : even[2]]
    inside = mask[: even[0], : even[1], : even[2]]
    detail = np.zeros([n // 2 for n in even], dtype=np.float32)
    whole = np.ones(detail.shape, dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                sign = np.float32(1 - 2 * ((i + j + k) % 2))
                detail += sign * values[i::2, j::2, k::2]
                whole &= inside[i::2, j::2, k::2]
    if not whole.any():
        return 0.0
    return float(np.median(np.abs(detail[whole])) / np.sqrt(8.0) / _MAD_TO_SIGMA)


#: ``lambda / (sigma h)`` of the TV-family inversions (sigma the effective noise in ppm, h the voxel size in
#: mm), measured as the NRMSE-optimal ratio across noise levels (see :func:`noise_proportional_regularization`).
TV_LAMBDA_PER_NOISE = 0.07
#: Model error of a field map as a fraction of its RMS: the floor of the effective noise (measured).
MODEL_ERROR_FRACTION = 0.07
#: Half-width of :func:`estimate_edges`' ramp as a share of its edge fraction: on five suite heads a ramp of
#: 0.25 measured the step's accuracy (36.85 against 36.80 % mean chi NRMSE) and a third of its difference
#: between array libraries.
EDGE_RAMP = 0.25


def effective_noise(noise_ppm: float, field_rms_ppm: float, voxel_size_mm: Sequence[float],
                    model_error_fraction: float = MODEL_ERROR_FRACTION) -> float:
    """The field's effective noise ``sqrt((sigma h)^2 + (e rms)^2)`` (ppm mm) that the automatic rules scale.

    Scaling the field and its noise by ``c`` scales the best ``chi`` and the
    best TV ``lambda`` by ``c`` (both terms of the functional grow by ``c^2``),
    so that ``lambda`` is proportional to the noise; ``h`` (the geometric
    mean voxel size, mm) keeps the total variation's weight per voxel the
    same at any resolution. A field without noise still differs from the
    dipole model (partial volumes, the discrete kernel, what background
    removal left), by an amount that grows with the field: ``e``
    (:data:`MODEL_ERROR_FRACTION`) times its RMS (in mm ppm: the best
    ``lambda`` of noise-free fields measured the same from 1 to 3 mm
    voxels), added in quadrature.

    Parameters
    ----------
    noise_ppm : float
        Noise standard deviation of the (weighted) field, ppm (:func:`field_noise`).
    field_rms_ppm : float
        RMS of the (weighted, demeaned) field in the mask, ppm.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    model_error_fraction : float
        ``e``; a method whose data term absorbs model error itself needs less (MEDI).

    Returns
    -------
    float
        ppm mm.

    Examples
    --------
    >>> round(effective_noise(2e-3, 0.0, (1.0, 1.0, 1.0)), 6)
    0.002
    """
    effective = float(np.hypot(max(float(noise_ppm), 0.0) * mean_voxel_mm(voxel_size_mm),
                               model_error_fraction * max(float(field_rms_ppm), 0.0)))
    if not effective > 0:
        raise QSMInputError("The field is zero everywhere in the mask: there is nothing to invert. Check the field.")
    return effective


def noise_proportional_regularization(
    noise_ppm: float, field_rms_ppm: float, voxel_size_mm: Sequence[float],
    model_error_fraction: float = MODEL_ERROR_FRACTION, lambda_per_noise: float = TV_LAMBDA_PER_NOISE,
) -> float:
    """TV ``lambda`` (ppm mm) proportional to the effective noise: ``k sqrt((sigma h)^2 + (e rms)^2)``.

    ``k`` is ``lambda_per_noise`` (:data:`TV_LAMBDA_PER_NOISE` for a data
    term on the field), measured on the validation suite; the effective
    noise is :func:`effective_noise`.

    Parameters
    ----------
    noise_ppm, field_rms_ppm, voxel_size_mm, model_error_fraction
        As :func:`effective_noise`.
    lambda_per_noise : float
        ``k``.

    Returns
    -------
    float

    Examples
    --------
    >>> round(noise_proportional_regularization(2e-3, 0.0, (1.0, 1.0, 1.0)), 6)
    0.00014
    """
    return lambda_per_noise * effective_noise(noise_ppm, field_rms_ppm, voxel_size_mm, model_error_fraction)


def measure_field(
    field_ppm: np.ndarray, mask: np.ndarray, weight: Optional[np.ndarray], field_sd_ppm: Optional[np.ndarray]
) -> dict[str, float]:
    """What the automatic rules read from a field: its noise (two estimates) and its RMS, all ppm.

    ``noise_ppm`` is the larger of ``detail_noise_ppm`` (:func:`field_noise`
    of the weighted field) and ``fit_noise_ppm``, the echo fit's noise of the
    weighted data term ``1 / mean(1 / SD)`` (the weight is the inverse SD
    scaled to mean 1): spatially correlated noise (k-space filtering, coil
    combination) hides from the finest detail but not from the fit's
    residuals. ``field_rms_ppm`` is the weighted field's SD in the mask.
    """
    detail_noise_ppm = field_noise(field_ppm, mask, weight)
    fit_noise_ppm = 0.0
    if field_sd_ppm is not None:
        sd = np.asarray(field_sd_ppm, dtype=np.float64)[mask]
        sd = sd[sd > 0]
        fit_noise_ppm = float(1.0 / np.mean(1.0 / sd)) if sd.size else 0.0
    weighted = np.asarray(field_ppm, dtype=np.float32)[mask]
    if weight is not None:
        weighted = weighted * np.asarray(weight, dtype=np.float32)[mask]
    return {"noise_ppm": max(detail_noise_ppm, fit_noise_ppm), "detail_noise_ppm": detail_noise_ppm,
            "fit_noise_ppm": fit_noise_ppm, "field_rms_ppm": float(weighted.std()) if weighted.size else 0.0}


def effective_echo_time(
    echo_times_s: Sequence[float], magnitude: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None
) -> float:
    """The echo time at which a multi-echo field is compared as phase by nonlinear data terms, seconds.

    The weighted echo fit estimates the field from the echoes in proportion
    to ``w_n TE_n`` (``w_n = |S_n|^2``, the inverse phase variance), so the
    fitted field is a weighted average of per-echo fields with that weight;
    its mean echo time, ``sum w_n TE_n^2 / sum w_n TE_n``, is where a phase
    error of the fitted field matches the phase errors of the data. ``w_n``
    is the median ``|S_n|^2`` inside ``mask`` (T2* decay), or uniform without
    magnitude.

    Parameters
    ----------
    echo_times_s : sequence of float
        Echo times, seconds.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2), optional
        Multi-echo magnitude.
    mask : numpy.ndarray of bool, shape (n0, n1, n2), optional
        Brain mask for the median (whole volume without it).

    Returns
    -------
    float

    Examples
    --------
    >>> round(effective_echo_time([0.004, 0.008, 0.012, 0.016, 0.020]) * 1000, 2)
    14.67
    """
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    weights = np.ones_like(times)
    if magnitude is not None and np.ndim(magnitude) == 4 and np.shape(magnitude)[0] == times.size:
        region = np.ones(np.shape(magnitude)[1:], bool) if mask is None else np.asarray(mask, dtype=bool)
        if region.any():
            weights = np.array([float(np.median(np.square(echo[region], dtype=np.float64))) for echo in magnitude])
    if not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        weights = np.ones_like(times)
    return float((weights * times * times).sum() / (weights * times).sum())


def tv_regularization(
    regularization: Union[float, str],
    field_ppm: np.ndarray,
    mask: np.ndarray,
    weight: Optional[np.ndarray],
    voxel_size_mm: Sequence[float],
    label: str,
    field_sd_ppm: Optional[np.ndarray] = None,
    model_error_fraction: float = MODEL_ERROR_FRACTION,
    lambda_per_noise: float = TV_LAMBDA_PER_NOISE,
) -> tuple[float, dict[str, Any]]:
    """Resolve a TV-family ``regularization`` argument: a positive number, or ``"auto"`` (from the noise).

    Parameters
    ----------
    regularization : float or "auto"
        The user's choice.
    field_ppm : numpy.ndarray, shape (n0, n1, n2)
        The field the method inverts, ppm.
    mask : numpy.ndarray of bool
        Where the field is valid.
    weight : numpy.ndarray, optional
        The data weight of the method (mean 1 in the mask), so that the noise
        is that of the weighted data term.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    label : str
        Method name for error messages.
    field_sd_ppm : numpy.ndarray, optional
        The echo fit's noise SD per voxel (ppm, 0 where unknown). The noise
        of the weighted data term is then ``1 / mean(1 / SD)`` (the weight is
        the inverse SD scaled to mean 1); the larger of that and the
        estimate from the field's finest detail is used, since spatially
        correlated noise (k-space filtering, coil combination) hides from the
        finest detail but not from the fit's residuals.
    model_error_fraction : float
        As :func:`effective_noise`.
    lambda_per_noise : float
        As :func:`noise_proportional_regularization`.

    Returns
    -------
    lambda : float
        ``lambda`` in ppm mm.
    parameters : dict
        For provenance: ``regularization``, and with ``"auto"`` also
        ``regularization_rule`` and ``noise_ppm``.

    Examples
    --------
    >>> import numpy as np
    >>> field = np.random.default_rng(0).normal(0, 1e-3, (20, 20, 20)).astype(np.float32)
    >>> value, chosen = tv_regularization("auto", field, np.ones(field.shape, bool), None, (1, 1, 1), "TV")
    >>> chosen["regularization_rule"], round(chosen["noise_ppm"] * 1e3, 1)
    ('noise-proportional', 0.9)
    """
    if isinstance(regularization, str):
        if regularization != "auto":
            raise QSMInputError(f"{label}: regularization must be a positive number or 'auto', got {regularization!r}.")
        measured = measure_field(field_ppm, mask, weight, field_sd_ppm)
        value = noise_proportional_regularization(measured["noise_ppm"], measured["field_rms_ppm"], voxel_size_mm,
                                                  model_error_fraction, lambda_per_noise)
        return value, {"regularization": value, "regularization_rule": "noise-proportional", **measured}
    value = float(regularization)
    if not (value > 0 and np.isfinite(value)):
        raise QSMInputError(f"{label}: regularization must be a positive number or 'auto', got {regularization!r}.")
    return value, {"regularization": value, "regularization_rule": "fixed"}


def echo_time(
    echo_time_s: Optional[float],
    echo_times_s: Optional[Sequence[float]],
    magnitude: Optional[np.ndarray],
    mask: Optional[np.ndarray],
) -> tuple[float, str]:
    """The echo time of a nonlinear data term and how it was chosen.

    The user's ``echo_time_s`` if given, else the scan's
    :func:`effective_echo_time`, else 20 ms (a field map given without echo
    times).

    Examples
    --------
    >>> echo_time(None, [0.004, 0.008, 0.012, 0.016, 0.020], None, None)[1]
    'effective (echo-fit weighted mean)'
    """
    if echo_time_s is not None:
        return float(echo_time_s), "fixed"
    if echo_times_s is not None and len(echo_times_s) > 0:
        return effective_echo_time(echo_times_s, magnitude, mask), "effective (echo-fit weighted mean)"
    return 0.02, "default (no echo times given)"


def edge_weight(
    magnitude: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float], edge_fraction: float
) -> np.ndarray:
    """MEDI's gradient mask: 0 where the magnitude has an edge, 1 elsewhere, shape (3, n0, n1, n2).

    The magnitude (root sum of squares over echoes) is set to 0 outside
    ``mask``; the threshold on ``|d magnitude / d axis|`` is chosen so that
    ``edge_fraction`` of the gradient components at mask voxels count as
    edges (MEDI's ``percentage = 0.9`` of the voxel count is 0.3 of the
    components).
    """
    mask = np.asarray(mask, dtype=bool)
    if tuple(np.shape(magnitude)[-3:]) != mask.shape:
        raise QSMInputError(
            f"The magnitude has spatial shape {tuple(np.shape(magnitude)[-3:])} but the mask has {mask.shape}: "
            "they must match."
        )
    weight = np.ones((3, *mask.shape), dtype=np.float32)
    if not mask.any():
        return weight
    # On the mask's bounding box and a layer of zeros (a third of a head's field of view): outside
    # it the masked magnitude is 0 and so is its gradient. Where the mask reaches the array's end the
    # periodic difference wraps round, so that axis is taken whole.
    box = list(_fft.mask_bounding_box(mask, [1, 1, 1]))
    for axis, (part, size) in enumerate(zip(box, mask.shape)):
        if part.start == 0 or part.stop == size:
            box[axis] = slice(0, size)
    box = tuple(box)
    inside_box = mask[box]
    combined = np.where(inside_box, root_sum_of_squares(np.asarray(magnitude)[(Ellipsis, *box)]), np.float32(0))
    magnitude_gradient = gradient(combined, voxel_size_mm)
    np.abs(magnitude_gradient, out=magnitude_gradient)
    inside = magnitude_gradient[:, inside_box]
    threshold = float(np.quantile(inside, 1.0 - float(edge_fraction)))
    weight[(slice(None), *box)] = magnitude_gradient <= threshold
    return weight


def free_edges(
    magnitude: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float], edge_fraction: float
) -> np.ndarray:
    """Per-voxel weight of an isotropic TV prior: 0 where the magnitude has an edge along any axis, else 1.

    :func:`edge_weight` per gradient component, combined per voxel (the
    isotropic soft threshold acts on a voxel's whole gradient), shape
    (n0, n1, n2), float32.

    Examples
    --------
    >>> import numpy as np
    >>> magnitude = np.ones((8, 8, 8), np.float32)
    >>> magnitude[4:] = 0.2  # a dark half: edges where it starts and (periodic differences) where it ends
    >>> weight = free_edges(magnitude, np.ones((8, 8, 8), bool), (1.0, 1.0, 1.0), 0.1)
    >>> int((weight == 0).sum()), weight.dtype  # two planes of 8 x 8 voxels
    (128, dtype('float32'))
    """
    return edge_weight(magnitude, mask, voxel_size_mm, edge_fraction).min(axis=0)


def estimate_edges(
    chi_ppm: np.ndarray, valid: np.ndarray, voxel_size_mm: Sequence[float], edge_fraction: float
) -> np.ndarray:
    """Per-voxel weight of an isotropic TV prior: 0 where a first estimate of chi has a strong edge, 1 far from one.

    The edges of :func:`free_edges`, found on chi instead of the magnitude:
    about the ``edge_fraction`` largest ``|d chi / d axis|`` of the gradient
    components between two voxels of ``valid`` count as edges. A component
    above the ``1 - (1 - EDGE_RAMP) edge_fraction`` quantile is an edge
    (weight 0), one below the ``1 - (1 + EDGE_RAMP) edge_fraction`` quantile
    is not (weight 1), and the weight falls linearly between the two; a
    voxel takes the smallest weight of its three components. Outside
    ``valid`` the weight is 1. Iron-rich nuclei decay fast, so at low SNR
    their borders are lost in the magnitude's noise while chi still shows
    them.

    Parameters
    ----------
    chi_ppm : numpy.ndarray, shape (n0, n1, n2)
        First estimate of chi (ppm), valid on ``valid``.
    valid : numpy.ndarray of bool, shape (n0, n1, n2)
        Where ``chi_ppm`` holds an estimate.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    edge_fraction : float
        Share of the components that count as edges, in (0, 1).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
        Weights in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.zeros((8, 8, 8), np.float32)
    >>> chi[2:5, 2:5, 2:5] = 0.2  # a nucleus: its six faces are the strongest edges
    >>> weight = estimate_edges(chi, np.ones(chi.shape, bool), (1.0, 1.0, 1.0), 0.1)
    >>> # forward differences: the layer before each face's low side, the cube's own layer at its high side
    >>> int((weight == 0).sum()), int((weight == 1).sum()), weight.dtype  # 27 outside + 19 inside
    (46, 466, dtype('float32'))
    """
    valid = np.asarray(valid, dtype=bool)
    magnitude = np.abs(gradient(np.where(valid, chi_ppm, 0).astype(np.float32), voxel_size_mm))
    # a component counts only between two voxels that both hold an estimate
    pairs = np.stack([valid & np.roll(valid, -1, axis=axis) for axis in range(3)])
    if not pairs.any():
        return np.ones(valid.shape, dtype=np.float32)
    low, high = np.quantile(magnitude[pairs], [1.0 - (1.0 + EDGE_RAMP) * edge_fraction,
                                               1.0 - (1.0 - EDGE_RAMP) * edge_fraction])
    # a ramp, not a step: float rounding (another array library, the axes stored in another order) then
    # moves the weights a little instead of turning single components on or off
    component = np.clip((high - magnitude) / max(float(high - low), 1e-30), 0.0, 1.0)
    component[(magnitude <= low) | ~pairs] = 1.0
    return component.min(axis=0).astype(np.float32)


def merit_weight(weight: Any, residual: Any, mask: Any, factor: float) -> tuple[Any, int]:
    """MERIT (model error reduction through iterative tuning): data weights down where the model fails.

    ``residual`` is the weighted data residual of the current estimate (real,
    or complex for a nonlinear data term). Less its mean over ``mask``, its
    magnitude is compared with ``factor`` times the standard deviation of
    that magnitude in ``mask``; where it is ``t > 1`` times larger the weight
    is divided by ``t^2``. Such voxels hold what no dipole field of the
    susceptibility explains (phase errors, partial volumes of bone and air at
    the mask's edge, flow); kept at full weight they pull the solution into
    streaks. Works on any array API namespace.

    Parameters
    ----------
    weight : array, shape (n0, n1, n2)
        Data weight ``W`` (not squared).
    residual : array, shape (n0, n1, n2)
        ``W (model - data)`` of the current estimate.
    mask : array of bool, shape (n0, n1, n2)
        Where the data term applies.
    factor : float
        Multiple of the residual's standard deviation beyond which voxels
        are down-weighted (MEDI uses 6).

    Returns
    -------
    weight : array
        The new weight (the dtype of ``weight`` and ``residual``'s magnitude).
    count : int
        How many voxels of ``mask`` were down-weighted.

    References
    ----------
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
    formulation of the magnetic field to source relationship for robust
    quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476.

    Examples
    --------
    >>> import numpy as np
    >>> residual = np.zeros((4, 4, 4), np.float32)
    >>> residual[::2] = 0.1
    >>> residual[0, 0, 0] = 5.0  # one voxel the model cannot explain
    >>> weight, count = merit_weight(np.ones((4, 4, 4), np.float32), residual, np.ones((4, 4, 4), bool), 3.0)
    >>> count, round(float(weight[0, 0, 0]), 2), float(weight[1, 1, 1])
    (1, 0.14, 1.0)
    """
    xp = _backend.namespace(weight)
    inside = residual[mask]
    residual = residual - xp.mean(inside)
    size = xp.abs(residual)
    spread = float(factor) * float(xp.std(size[mask]))
    if not spread > 0:
        return weight, 0
    ratio = xp.maximum(size / _backend.scalar(size, spread), _backend.scalar(size, 1.0))
    count = int(xp.sum(xp.astype(ratio[mask] > 1, xp.int64)))
    return weight / (ratio * ratio), count
