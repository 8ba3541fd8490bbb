"""Bipolar readout correction and detection.

With a bipolar (fly-back-free) readout, even echoes are read with the
gradient reversed, and gradient delays and eddy currents add a phase error
``beta`` to them: mostly a linear ramp along the readout plus a constant
(Li et al., "Phase-corrected bipolar gradients in multi-echo gradient-echo
sequences for quantitative susceptibility mapping", MAGMA 2015; Eckstein et
al., MRM 2018). For three equally spaced echoes the
combination ``phi_n + phi_{n+2} - 2 phi_{n+1}`` cancels the field and any
echo-independent offset and leaves ``-2 beta`` (middle echo even) or
``+2 beta`` (middle echo odd). All such triples are summed as complex
products, a smooth model of ``beta`` (constant + linear in every axis,
optionally polynomial along the readout) is fitted to the result without
unwrapping, and ``beta`` is subtracted from the even echoes.

``beta`` is known modulo pi from ``2 beta``; its constant part is taken in
[-pi/2, pi/2). The other choice differs by a uniform frequency shift of
``1 / (2 dTE)`` Hz, which background field removal takes out anyway.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._wrapping import complex_product, exclude_non_finite, wrap_in_place
from ..contract import PhaseResult
from ..errors import QSMInputError
from .offsets import mcpc3ds, phase_slopes, signal_region

#: Relative tolerance on equal echo spacing.
_SPACING_TOLERANCE = 0.01


def _check_bipolar_echoes(echo_times_s: Sequence[float], n_echoes: int) -> None:
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if times.size != n_echoes:
        raise QSMInputError(f"{times.size} echo time(s) for {n_echoes} echo(es): give one echo time per echo.")
    if n_echoes < 3:
        raise QSMInputError(
            f"Bipolar correction needs at least 3 echoes to separate the readout error from the field, got "
            f"{n_echoes}: use bipolar 'none' (or acquire with a monopolar readout)."
        )
    spacing = np.diff(times)
    if np.any(np.abs(spacing - spacing.mean()) > _SPACING_TOLERANCE * spacing.mean()):
        raise QSMInputError(
            f"Bipolar correction needs equally spaced echoes, got spacings {np.round(spacing * 1e3, 3).tolist()} ms."
        )


def _even_echo_product(phase: np.ndarray, magnitude: np.ndarray, cancel: CancelToken) -> np.ndarray:
    """Sum over echo triples of ``S_n S_{n+2} conj(S_{n+1})^2``, conjugated where the middle echo has no error.

    Its phase is ``-2 beta`` (field and offsets cancel); its magnitude is
    about ``|S|^4``.
    """
    total = np.zeros(phase.shape[1:], dtype=np.complex64)
    for first in range(phase.shape[0] - 2):
        check_cancel(cancel)
        combined = phase[first] + phase[first + 2] - 2.0 * phase[first + 1]
        if first % 2 == 1:
            combined = -combined
        weight = magnitude[first] * magnitude[first + 2] * magnitude[first + 1] ** 2
        total.real += weight * np.cos(combined)
        total.imag += weight * np.sin(combined)
    return total


#: Volumes of at least this many voxels are fitted on every other voxel along each axis: the error is a smooth
#: model of a few coefficients, which an eighth of the voxels estimates as well. At 256 x 256 x 176 x 9 this took
#: the estimate from 4.2 to 0.3 s (constant -0.596 against -0.600 rad, slope -0.0078 per voxel either way).
SAMPLED_FIT_VOXELS = 2**20


def _coordinates(shape: Sequence[int], stride: int = 1) -> list[np.ndarray]:
    """Centred voxel index of the grid ``shape`` per axis, at every ``stride``-th voxel, broadcastable."""
    coordinates = []
    for axis, size in enumerate(shape):
        view = [1, 1, 1]
        view[axis] = -1
        coordinates.append((np.arange(0, size, stride, dtype=np.float32) - (size - 1) / 2.0).reshape(view))
    return coordinates


class _PhaseModel:
    """``g(x) = c + sum_a s_a x_a + sum_{k>=2} p_k x_r^k`` (x in voxels of the grid ``shape`` from its centre)."""

    def __init__(self, shape: Sequence[int], readout_axis: int, order: int):
        self.shape = tuple(shape)
        self.readout_axis = readout_axis
        self.order = order
        self.coefficients = np.zeros(4 + max(order - 1, 0))

    def terms(self, stride: int = 1) -> list[np.ndarray]:
        """The model's terms at every ``stride``-th voxel along each axis."""
        coordinates = _coordinates(self.shape, stride)
        readout = coordinates[self.readout_axis]
        return [np.ones((1, 1, 1), np.float32), *coordinates] + [
            readout**power for power in range(2, self.order + 1)
        ]

    def evaluate(self, stride: int = 1) -> np.ndarray:
        """The model at every ``stride``-th voxel along each axis (all voxels by default)."""
        value = np.zeros([len(range(0, n, stride)) for n in self.shape], dtype=np.float32)
        for coefficient, term in zip(self.coefficients, self.terms(stride)):
            value += np.float32(coefficient) * term
        return value


def _fit_even_echo_phase(
    product: np.ndarray, readout_axis: Optional[int], order: int, shape: Sequence[int], stride: int
) -> tuple[_PhaseModel, np.ndarray]:
    """Fit the smooth model to the phase of ``product`` (no unwrapping); returns the model and its region.

    ``product`` holds every ``stride``-th voxel along each axis of the grid ``shape``, on which the
    model is defined; the region is on ``product``'s grid.
    """
    weight = np.sqrt(np.abs(product)).astype(np.float32)
    region = signal_region(weight)
    if np.count_nonzero(region) < 10:
        raise QSMInputError("Too little signal to estimate a bipolar phase error: check the magnitude images.")
    slopes = [slope / stride for slope in phase_slopes(np.where(region, product, 0))]
    if readout_axis is None:
        readout_axis = int(np.argmax([abs(s) * n for s, n in zip(slopes, shape)]))
    model = _PhaseModel(shape, readout_axis, order)
    model.coefficients[1:4] = slopes
    demodulated = complex_product(product, np.exp(-1j * model.evaluate(stride)))
    model.coefficients[0] = float(np.angle(demodulated[region].sum()))
    sample_weight = weight[region].astype(np.float64)
    design = np.stack([np.broadcast_to(t, product.shape)[region] for t in model.terms(stride)],
                      axis=1).astype(np.float64)
    weighted_design = design * sample_weight[:, None]
    for _ in range(3):
        residual = np.angle(complex_product(product[region], np.exp(-1j * model.evaluate(stride)[region])))
        update = np.linalg.lstsq(weighted_design, residual * sample_weight, rcond=None)[0]
        model.coefficients += update
    model.coefficients[0] = float(np.angle(np.exp(1j * model.coefficients[0])))
    return model, region


def _fit_bipolar_error(
    phase: np.ndarray, magnitude: np.ndarray, echo_times_s: Sequence[float], readout_axis: Optional[int],
    polynomial_order: int, cancel: CancelToken,
) -> tuple[_PhaseModel, np.ndarray, int]:
    """The checks of :func:`estimate_bipolar_error`, then the model of ``-2 beta``, its region and the stride."""
    if np.ndim(phase) != 4 or np.shape(magnitude) != np.shape(phase):
        raise QSMInputError(
            f"Bipolar correction needs phase and magnitude shaped (echo, n0, n1, n2), got {np.shape(phase)} and "
            f"{np.shape(magnitude)}."
        )
    _check_bipolar_echoes(echo_times_s, np.shape(phase)[0])
    if readout_axis is not None and readout_axis not in (0, 1, 2):
        raise QSMInputError(f"readout_axis must be 0, 1 or 2 (an array axis), got {readout_axis!r}.")
    if int(polynomial_order) != polynomial_order or polynomial_order < 1:
        raise QSMInputError(f"polynomial_order must be a whole number >= 1, got {polynomial_order!r}.")
    shape = tuple(np.shape(phase)[1:])
    stride = 2 if int(np.prod(shape)) >= SAMPLED_FIT_VOXELS else 1
    sampled = (slice(None),) + (slice(None, None, stride),) * 3
    phase, magnitude, _ = exclude_non_finite(np.asarray(phase)[sampled], np.asarray(magnitude)[sampled])
    product = _even_echo_product(phase, magnitude, cancel)
    model, region = _fit_even_echo_phase(product, readout_axis, int(polynomial_order), shape, stride)
    return model, region, stride


def estimate_bipolar_error(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    readout_axis: Optional[int] = None,
    polynomial_order: int = 1,
    cancel: CancelToken = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth estimate of the even-echo phase error ``beta``.

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians (offsets need not be removed: they cancel).
        Voxels non-finite in any echo are left out of the fit.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude.
    echo_times_s : sequence of float
        At least 3 equally spaced echo times, seconds.
    readout_axis : int, optional
        Array axis of the readout, for terms above linear; estimated as the
        axis along which the fitted error changes most when omitted.
    polynomial_order : int
        1: constant plus linear in every axis (Li 2015); 2 or more adds
        powers of the readout coordinate.
    cancel : callable or threading.Event, optional

    Returns
    -------
    beta : numpy.ndarray of float32, shape (n0, n1, n2)
        Error of the even echoes (2nd, 4th, ...), radians.
    region : numpy.ndarray of bool, shape (n0, n1, n2)
        Voxels with signal, where the model was fitted (from ``SAMPLED_FIT_VOXELS``
        voxels on, the fit takes every other voxel along each axis, and each
        stands for its 2 x 2 x 2 block here).
    """
    model, sampled_region, stride = _fit_bipolar_error(phase, magnitude, echo_times_s, readout_axis,
                                                       polynomial_order, cancel)
    beta = model.evaluate()
    beta *= np.float32(-0.5)
    region = sampled_region
    for axis, size in enumerate(beta.shape):
        region = np.repeat(region, stride, axis=axis)[(slice(None),) * axis + (slice(0, size),)]
    return beta, region


def linear_bipolar_correction(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    *,
    readout_axis: Optional[int] = None,
    polynomial_order: int = 1,
    remove_offset: bool = True,
    overwrite_phase: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> PhaseResult:
    """Remove the bipolar readout error from the even echoes.

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians; at least 3 equally spaced echoes.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude.
    echo_times_s : sequence of float
        Echo times, seconds.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis (for the offset re-estimation).
    readout_axis, polynomial_order
        See :func:`estimate_bipolar_error`.
    remove_offset : bool
        Afterwards estimate and remove the echo-independent offset again
        with MCPC-3D-S (default parameters). Needed after MCPC-3D-S ran on
        the uncorrected data: its estimate from echoes 1 and 2 absorbed
        ``TE1 / (TE2 - TE1)`` times the even-echo error. The pipeline runs
        this correction before MCPC-3D-S instead, with it off.
    overwrite_phase : bool
        Write the result into ``phase`` itself (when it is float32) instead
        of a new array, for callers that no longer need the input.
    progress : callable(fraction, message), optional
    cancel : callable or threading.Event, optional

    Returns
    -------
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Corrected phase, radians in [-pi, pi).
    maps : dict
        ``bipolar_error_rad``: the removed even-echo error, (n0, n1, n2).
        (The two come as a :class:`QSMLib.contract.PhaseResult`.)

    References
    ----------
    Li J, Chang S, Liu T, et al. Phase-corrected bipolar gradients in
    multi-echo gradient-echo sequences for quantitative susceptibility
    mapping. MAGMA 2015;28:347-355.
    Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient combination of multi-channel
    phase data from multi-echo acquisitions (ASPIRE). MRM 2018;79:2996-3006.

    Examples
    --------
    >>> import numpy as np
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(echo_times_s=(0.004, 0.008, 0.012, 0.016))
    >>> phase = scan.acquisition.phase.copy()
    >>> phase[1::2] += 0.5  # a constant error on the even echoes
    >>> corrected, maps = linear_bipolar_correction(phase, scan.acquisition.magnitude,
    ...                                             scan.acquisition.echo_times_s, (1.0, 1.0, 1.0))
    >>> round(float(np.median(maps["bipolar_error_rad"][scan.brain_mask])), 2)
    0.5
    """
    report(progress, 0.0, "Bipolar correction: estimating the even-echo error")
    beta, _ = estimate_bipolar_error(
        phase, magnitude, echo_times_s, readout_axis=readout_axis, polynomial_order=polynomial_order, cancel=cancel
    )
    # NaN voxels stay NaN: NaN minus beta is NaN.
    corrected = np.asarray(phase, dtype=np.float32) if overwrite_phase else np.array(phase, dtype=np.float32, copy=True)
    for echo in range(1, corrected.shape[0], 2):
        corrected[echo] -= beta
        wrap_in_place(corrected[echo])
    maps = {"bipolar_error_rad": beta}
    if remove_offset:
        check_cancel(cancel)
        report(progress, 0.5, "Bipolar correction: removing the remaining phase offset")
        # corrected is this function's own (or handed over): MCPC-3D-S may write into it
        corrected, offset_maps = mcpc3ds(corrected, magnitude, echo_times_s, voxel_size_mm, overwrite_phase=True,
                                         cancel=cancel)
        maps["bipolar_offset_rad"] = offset_maps["phase_offset_rad"]
    report(progress, 1.0, "Bipolar correction done")
    return PhaseResult(corrected, maps)


#: Score (rad) above which data are said to look bipolar: the phantom scores 0.34
#: bipolar and 0.0001 monopolar; the in-vivo crop (monopolar) 0.011.
BIPOLAR_THRESHOLD_RAD = 0.1


def bipolar_score(phase: np.ndarray, magnitude: np.ndarray, echo_times_s: Sequence[float]) -> float:
    """How large the even-echo phase error looks, in radians.

    The root-mean-square over voxels with signal of the smooth even-echo
    error that :func:`estimate_bipolar_error` fits (constant plus linear),
    on the voxels it fits (every other one along each axis from
    ``SAMPLED_FIT_VOXELS`` voxels on).
    Monopolar data give about 0; a bipolar readout typically tenths of a
    radian or more. Data with fewer than 3 echoes or uneven spacing, where
    the error cannot be separated from the field, score 0.

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase as acquired, radians.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude.
    echo_times_s : sequence of float
        Echo times, seconds.

    Returns
    -------
    float
        Weighted RMS of the fitted error, radians.
    """
    try:
        model, region, stride = _fit_bipolar_error(phase, magnitude, echo_times_s, None, 1, None)
    except QSMInputError:
        return 0.0
    # beta is half the fitted model, taken where the model was fitted
    return float(0.5 * np.sqrt(np.mean(np.square(model.evaluate(stride)[region], dtype=np.float64))))


def looks_bipolar(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    threshold_rad: float = BIPOLAR_THRESHOLD_RAD,
) -> bool:
    """True when the data carry an even-echo phase error like a bipolar readout's.

    Parameters
    ----------
    phase, magnitude, echo_times_s
        See :func:`bipolar_score`.
    threshold_rad : float
        Score above which the data are called bipolar, radians.

    Returns
    -------
    bool
    """
    return bipolar_score(phase, magnitude, echo_times_s) > threshold_rad
