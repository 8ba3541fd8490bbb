"""Echo-independent phase offset removal by MCPC-3D-S.

MCPC-3D-S (Eckstein et al., "Computationally efficient combination of
multi-channel phase data from multi-echo acquisitions (ASPIRE)", MRM 2018;
79:2996) estimates the offset from two echoes: their Hermitian inner product
``S2 conj(S1)`` holds the phase evolved between them, free of any offset;
spatially unwrapped and scaled by ``TE1 / (TE2 - TE1)`` it is the phase
evolved up to TE1, and what remains of echo 1 is the offset
``phi0 = phi1 - TE1 / (TE2 - TE1) * unwrap(phi2 - phi1)``. The offset is
smooth (coil sensitivities, RF), so it is smoothed as a complex,
magnitude-weighted field before it is removed; noise and unwrapping errors
average out. Any echo times work (uneven spacing included).

Smoothing averages one-sidedly at the object's edge, which biases a sloped
or curved offset there, and such an error is a field error that no
background removal takes out (it is not harmonic). So the offset's per-axis
curvature (the median second difference of the smoothed offset two sigma
inside the object, robust to noise and to regions where the evolved phase
was unwrapped wrongly, such as next to the sinuses) and then its slope are
taken out before smoothing and put back after. On qsm-forward's
heads, whose offset is a paraboloid spanning pi over the brain, the slope
alone left a field error of -0.6 Hz within 5 mm of the brain's edge against
+0.06 Hz deeper than 15 mm; with the curvature taken out too, within 0.05 Hz
(the pipeline's total field, qsmforward_1p06mm_2p89T and a 1.5 mm copy; on
the 7 T head cropped in k-space, with its ringing next to air, 0.9 Hz against
0.06 Hz before although the curvature came out close to the true one, while
its chi NRMSE fell by 0.1 point and its worst deep grey matter ROI error from
10.2 to 8.5 ppb).

The offset is estimated on a grid of about ``estimation_voxel_mm`` (complex
block sums), which costs a fraction of the full-resolution work and loses
nothing after smoothing over ``sigma_mm``; it is interpolated back linearly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.ndimage as ndi

from .._morphology import otsu_threshold
from .._parallel import for_each_slab
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._wrapping import complex_product, exclude_non_finite, polar, wrap_in_place
from ..contract import PhaseResult
from ..errors import QSMInputError
from ..unwrap.romeo import romeo_unwrap_volume

_TWO_PI = np.float32(2.0 * np.pi)


def block_factors(voxel_size_mm: Sequence[float], estimation_voxel_mm: float) -> tuple[int, int, int]:
    """Whole-voxel block size per axis that makes blocks about ``estimation_voxel_mm`` wide."""
    f0, f1, f2 = (max(1, int(round(float(estimation_voxel_mm) / float(v)))) for v in voxel_size_mm)
    return f0, f1, f2


def block_sum(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Sum of ``volume`` over blocks of ``factors`` voxels (zero-padded at the far ends)."""
    if tuple(factors) == (1, 1, 1):
        return volume.copy()
    padded_shape = [-(-n // f) * f for n, f in zip(volume.shape, factors)]
    if list(volume.shape) == padded_shape:
        padded = volume
    else:
        padded = np.zeros(padded_shape, dtype=volume.dtype)
        padded[tuple(slice(0, n) for n in volume.shape)] = volume
    coarse = [n // f for n, f in zip(padded_shape, factors)]
    return padded.reshape(coarse[0], factors[0], coarse[1], factors[1], coarse[2], factors[2]).sum(axis=(1, 3, 5))


def upsample_linear(
    coarse: np.ndarray, factors: Sequence[int], shape: Sequence[int], rows: slice = slice(None)
) -> np.ndarray:
    """Linear interpolation from block centres back to the full grid of ``shape``.

    ``rows``: only these rows (a slice of axis 0) of the result, as they
    would be in the whole.
    """
    result = coarse
    for axis, (factor, size) in enumerate(zip(factors, shape)):
        part = rows if axis == 0 else slice(None)
        if factor == 1:
            result = result[(slice(None),) * axis + (part,)]
            continue
        fine = np.arange(size, dtype=np.float32)[part]
        # Fine voxel i lies at coarse coordinate (i - (f - 1) / 2) / f.
        position = (fine - (factor - 1) / 2.0) / factor
        position = np.clip(position, 0.0, result.shape[axis] - 1)
        below = np.floor(position).astype(np.intp)
        above = np.minimum(below + 1, result.shape[axis] - 1)
        fraction = (position - below).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = fraction.size
        fraction = fraction.reshape(view)
        low = np.take(result, below, axis=axis)
        high = np.take(result, above, axis=axis)
        result = low + (high - low) * fraction
    return result


def signal_region(weight: np.ndarray) -> np.ndarray:
    """Voxels with clearly more than noise: above half of Otsu's threshold of ``weight``."""
    positive = weight[weight > 0]
    if positive.size == 0:
        return np.zeros(weight.shape, dtype=bool)
    return weight > 0.5 * otsu_threshold(np.minimum(positive, np.percentile(positive, 99.5)))


def estimate_offsets(
    first_echo: np.ndarray,
    hermitian_product: np.ndarray,
    evolution_ratio: float,
    voxel_size_mm: Sequence[float],
    *,
    sigma_mm: float,
    estimation_voxel_mm: float,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Smooth MCPC-3D-S phase offsets of one or more channels.

    Parameters
    ----------
    first_echo : numpy.ndarray of complex64, shape (channel, n0, n1, n2)
        Complex signal of the earlier of the two echoes, per channel (one
        channel for coil-combined data).
    hermitian_product : numpy.ndarray of complex64, shape (n0, n1, n2)
        ``sum over channels of S2 conj(S1)``: the phase evolved between the
        two echoes, offsets cancelled.
    evolution_ratio : float
        ``TE1 / (TE2 - TE1)``.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    sigma_mm : float
        Standard deviation of the Gaussian smoothing of the offset, mm.
    estimation_voxel_mm : float
        Size of the blocks the offset is estimated on, mm.
    cancel : callable or threading.Event, optional

    Returns
    -------
    numpy.ndarray of float32, shape (channel, n0, n1, n2)
        Offset per channel, radians in [-pi, pi].
    """
    shape = hermitian_product.shape
    factors = block_factors(voxel_size_mm, estimation_voxel_mm)
    coarse_hip = block_sum(hermitian_product, factors)
    weight = np.sqrt(np.abs(coarse_hip)).astype(np.float32)
    if min(coarse_hip.shape) < 2:
        raise QSMInputError(
            f"The volume {tuple(shape)} is too small to estimate phase offsets on a {estimation_voxel_mm} mm grid: "
            "lower estimation_voxel_mm."
        )
    check_cancel(cancel)
    evolved, _ = romeo_unwrap_volume(np.angle(coarse_hip).astype(np.float32), magnitude=weight, cancel=cancel)
    region = signal_region(weight)
    # The field's mean over the object is close to the scanner frequency, so the
    # evolved phase is centred on 0 there (any other 2 pi choice shifts phi0 by a constant).
    centre = evolved[region] if region.any() else evolved.ravel()
    evolved -= _TWO_PI * np.float32(np.rint(np.median(centre) / _TWO_PI))
    evolved *= np.float32(evolution_ratio)
    rotation = np.exp(-1j * evolved).astype(np.complex64)
    sigma_voxels = [float(sigma_mm) / (f * float(v)) for f, v in zip(factors, voxel_size_mm)]
    coarse_axes = [np.arange(n, dtype=np.float32) for n in coarse_hip.shape]
    centres = [(n - 1) / 2.0 for n in coarse_hip.shape]
    fine_axes = [(np.arange(n, dtype=np.float32) - (f - 1) / 2.0) / f for n, f in zip(shape, factors)]
    offsets = np.empty(first_echo.shape, dtype=np.float32)
    for channel in range(first_echo.shape[0]):
        check_cancel(cancel)
        coarse = block_sum(first_echo[channel], factors) * rotation
        coarse[~region] = 0
        # Smoothing near the object's edge averages one-sidedly, which biases a
        # sloped or curved offset; the curvature and then the slope are taken out
        # first and put back afterwards.
        curvatures = phase_curvatures(coarse, sigma_voxels)
        _apply_ramp(coarse, coarse_axes, [0.0] * 3, -1.0, curvatures, centres)
        slopes = phase_slopes(coarse)
        _apply_ramp(coarse, coarse_axes, slopes, -1.0)
        smooth = _smooth_complex(coarse, sigma_voxels)

        def fill(rows: slice, channel: int = channel, smooth: np.ndarray = smooth, slopes: list = slopes,
                 curvatures: list = curvatures) -> None:
            fine = upsample_linear(smooth, factors, shape, rows)
            _apply_ramp(fine, [fine_axes[0][rows], *fine_axes[1:]], slopes, 1.0, curvatures, centres)
            offsets[channel, rows] = np.angle(fine)

        # in slabs on all threads: no full-size complex temporaries
        for_each_slab(fill, shape[0], shape[1] * shape[2])
    return offsets


def phase_slopes(field: np.ndarray) -> list[float]:
    """Mean phase change per voxel along each axis: the phase of the lag-1 autocorrelation (no unwrapping)."""
    slopes = []
    for axis in range(field.ndim):
        ahead = np.take(field, np.arange(1, field.shape[axis]), axis=axis)
        behind = np.take(field, np.arange(field.shape[axis] - 1), axis=axis)
        # numpy's sum rather than np.vdot (BLAS), whose last bits can follow its thread count
        slopes.append(float(np.angle(np.sum(complex_product(np.conj(behind), ahead)))))
    return slopes


def _smooth_complex(field: np.ndarray, sigma_voxels: Sequence[float]) -> np.ndarray:
    """``field`` smoothed by a Gaussian of ``sigma_voxels`` (zero beyond the grid), real and imaginary parts."""
    smooth = np.empty(field.shape, dtype=np.complex64)
    smooth.real = ndi.gaussian_filter(field.real, sigma_voxels, mode="constant", truncate=3.0)
    smooth.imag = ndi.gaussian_filter(field.imag, sigma_voxels, mode="constant", truncate=3.0)
    return smooth


def phase_curvatures(field: np.ndarray, sigma_voxels: Sequence[float]) -> list[float]:
    """Second difference of the phase per voxel squared along each axis, of ``field`` (0 outside the object)
    smoothed by a Gaussian of ``sigma_voxels``: the median over the voxels two sigma inside the object (where
    the smoothing is not one-sided) of the phase of ``S[x+1] conj(S[x])^2 S[x-1]`` (no unwrapping). Unlike
    the phase of their sum, or second differences of the unsmoothed field (noise times sqrt(6)), the median
    is not drawn by regions where the phase changes fast or was unwrapped wrongly, such as next to air."""
    smooth = _smooth_complex(field, sigma_voxels)
    interior = ndi.binary_erosion(field != 0, iterations=int(np.ceil(2.0 * max(sigma_voxels))))
    curvatures = []
    for axis in range(field.ndim):
        n = field.shape[axis]
        ahead, centre, behind = (np.take(smooth, np.arange(start, start + n - 2), axis=axis) for start in (2, 1, 0))
        product = complex_product(complex_product(np.conj(centre), ahead), complex_product(np.conj(centre), behind))
        inside = np.take(interior, np.arange(1, n - 1), axis=axis)
        curvatures.append(float(np.median(np.angle(product[inside]))) if inside.any() else 0.0)
    return curvatures


def _apply_ramp(
    field: np.ndarray, axes: Sequence[np.ndarray], slopes: Sequence[float], sign: float,
    curvatures: Sequence[float] = (0.0, 0.0, 0.0), centres: Sequence[float] = (0.0, 0.0, 0.0),
) -> None:
    """Multiply ``field`` in place by ``exp(i sign sum_a (slope_a x_a + curvature_a (x_a - centre_a)^2 / 2))``,
    one axis at a time."""
    for axis, (coordinate, slope, curvature, centre) in enumerate(zip(axes, slopes, curvatures, centres)):
        view = [1, 1, 1]
        view[axis] = coordinate.size
        offset = coordinate - np.float32(centre)
        phase = np.float32(slope) * coordinate + np.float32(0.5 * curvature) * offset * offset
        field *= np.exp(1j * np.float32(sign) * phase).astype(np.complex64).reshape(view)


def check_echo_pair(echo_times_s: Sequence[float], n_echoes: int, offset_echoes: Sequence[int]) -> tuple[int, int]:
    """The two echoes to estimate offsets from, earlier first; refuses single-echo data and bad indices."""
    if n_echoes < 2:
        raise QSMInputError(
            "MCPC-3D-S needs at least two echoes to separate the phase offset from the field: "
            "use phase_offset 'none' for single-echo data."
        )
    pair = tuple(int(e) for e in offset_echoes)
    if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= e < n_echoes for e in pair):
        raise QSMInputError(
            f"offset_echoes must name two different echoes (zero-based indices below {n_echoes}), got "
            f"{list(offset_echoes)}."
        )
    first, second = sorted(pair, key=lambda e: echo_times_s[e])
    return first, second


def mcpc3ds(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    *,
    offset_echoes: Sequence[int] = (0, 1),
    sigma_mm: float = 5.0,
    estimation_voxel_mm: float = 2.0,
    overwrite_phase: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> PhaseResult:
    """Remove the echo-independent phase offset of coil-combined data (MCPC-3D-S).

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude (weights the smoothing).
    echo_times_s : sequence of float
        Echo times in seconds; need not be evenly spaced.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    offset_echoes : pair of int
        Zero-based indices of the two echoes the offset is estimated from
        (default the first two: most signal, fewest wraps).
    sigma_mm : float
        Gaussian smoothing of the offset, mm (Eckstein 2018 smooth over
        about 10 voxels in-plane).
    estimation_voxel_mm : float
        Grid on which the offset is estimated, mm (block sums of voxels).
    overwrite_phase : bool
        Write the result into ``phase`` itself (when it is float32) instead
        of a new array: one phase-sized array less (415 MB at 256 x 256 x
        176 x 9), for callers that no longer need the input.
    progress : callable(fraction, message), optional
    cancel : callable or threading.Event, optional

    Returns
    -------
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        ``wrap(phase - phi0)``: ``2 pi f TE_n`` plus noise; NaN where any
        echo of the input was NaN or infinite (those voxels are left out of
        the estimate).
    maps : dict
        ``phase_offset_rad``: the removed offset ``phi0``, (n0, n1, n2).
        (The two come as a :class:`QSMLib.contract.PhaseResult`.)

    References
    ----------
    Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient
    combination of multi-channel phase data from multi-echo acquisitions
    (ASPIRE). MRM 2018;79:2996-3006.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> corrected, maps = mcpc3ds(scan.acquisition.phase, scan.acquisition.magnitude,
    ...                            scan.acquisition.echo_times_s, scan.acquisition.voxel_size_mm)
    >>> corrected.shape, sorted(maps)
    ((4, 32, 32, 32), ['phase_offset_rad'])
    >>> brain = scan.brain_mask
    >>> bool(abs(maps["phase_offset_rad"][16, 16, 16] - 0.3) < 0.05)  # the simulated offset at the centre
    True
    """
    if np.ndim(phase) != 4 or np.shape(magnitude) != np.shape(phase):
        raise QSMInputError(
            f"MCPC-3D-S needs phase and magnitude shaped (echo, n0, n1, n2), got {np.shape(phase)} and "
            f"{np.shape(magnitude)}."
        )
    phase, magnitude, invalid = exclude_non_finite(phase, magnitude)
    first, second = check_echo_pair(echo_times_s, phase.shape[0], offset_echoes)
    report(progress, 0.0, "MCPC-3D-S: estimating the phase offset")
    signal_first = np.empty(phase.shape[1:], dtype=np.complex64)
    hip = np.empty(phase.shape[1:], dtype=np.complex64)

    def signals(rows: slice) -> None:
        signal_first[rows] = polar(magnitude[first, rows], phase[first, rows])
        complex_product(polar(magnitude[second, rows], phase[second, rows]), np.conj(signal_first[rows]),
                        out=hip[rows])

    for_each_slab(signals, phase.shape[1], phase[0, 0].size)
    ratio = echo_times_s[first] / (echo_times_s[second] - echo_times_s[first])
    offset = estimate_offsets(
        signal_first[np.newaxis], hip, ratio, voxel_size_mm, sigma_mm=sigma_mm,
        estimation_voxel_mm=estimation_voxel_mm, cancel=cancel,
    )[0]
    signal_first = hip = None  # freed before the full-size correction
    report(progress, 0.7, "MCPC-3D-S: removing the offset")
    corrected = phase if overwrite_phase else np.empty_like(phase)

    def correct_slab(slab: slice) -> None:
        for echo in range(phase.shape[0]):
            check_cancel(cancel)
            corrected[echo, slab] = wrap_in_place(phase[echo, slab] - offset[slab])

    for_each_slab(correct_slab, phase.shape[1], phase[0, 0].size)
    if invalid.any():
        corrected[:, invalid] = np.nan
    report(progress, 1.0, "MCPC-3D-S done")
    return PhaseResult(corrected, {"phase_offset_rad": offset})
