"""Zero-filling: solving a coarse scan on a finer grid, and bringing the results back.

A scanner's image is the inverse Fourier transform of the k-space samples it
acquired, so the band-limited interpolation of its complex images onto a finer
grid (zero-filling the spectrum, "ZIP") adds no information and changes no
sample's content. The pipeline (``PipelineConfig.zero_fill_mm``) runs the
phase, field, mask and inversion stages of a coarse scan (1.3-2 mm voxels) on
such a grid of about 1 mm, where the dipole model and the TV prior resolve the
tissue's structure (on the validation suite the gain is the inversion's), and
brings the maps back to the scan's grid by keeping their spectrum's band (the
scan's own band) and nothing beyond it, which is only noise and the prior's
detail. Masks and the other maps take the value of the fine voxel nearest each
scan voxel's centre. It helps on data that are band-limited as a scanner
records them, and hurts on data that are not (simulated on their own grid,
box-averaged); by default (``"auto"``) :func:`ringing_excess` tells the two
apart by the ringing that a k-space cut-off leaves in the air outside the head
(README, "Zero-filling coarse scans").

Grids share their first voxel's centre: fine voxel ``j`` along an axis of ``n``
scan voxels and ``m`` fine ones lies at scan index ``j * n / m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import scipy.fft
from scipy import ndimage as ndi

from . import _fft
from ._morphology import fill_holes
from ._operators import masked_smoothing
from .acquisition import MultiEchoGRE

#: An axis is zero-filled when its voxel exceeds the solving voxel by more than this factor.
COARSE_FACTOR = 1.25
#: The solving grid holds at most this many times the scan's voxels (time and memory grow with the count).
MAX_VOXEL_GROWTH = 8.0
#: An axis is cut (a slab's) when more than this share of each of its two end faces has signal.
CUT_FACE_SHARE = 0.25
#: Signal: a magnitude above this fraction of the first echo's 99th percentile.
SIGNAL_FRACTION = 0.2

#: ``zero_fill_mm="auto"`` solves on voxels of this size (mm), or of half the scan's largest voxel when that is
#: coarser (the grid then holds at most 8 times the scan's voxels).
AUTO_SOLVE_VOXEL_MM = 1.0
#: The inversions ``zero_fill_mm="auto"`` zero-fills for: zero-filling was chosen with TFI (eleven band-limited
#: heads), whose automatic lambda follows the acquired voxel (``acquired_voxel_size_mm``). The others' lambda
#: rules follow the grid they run on; zero-filled, linear TV's, MEDI's, nonlinear TV's and SS-TV's worst deep
#: grey matter ROI error rose by 10-16 ppb, RTS's and L2's were mixed. On the band-limited 2 mm head
#: ``low_field_2mm_1p5T`` (consensus preset with the inversion changed, whole pipeline; README, "Zero-filling
#: coarse scans"), scan's grid -> 1 mm, chi NRMSE % and worst ROI error ppb: TFI 35.71 -> 30.51, 6.3 -> 5.0;
#: linear TV 55.03 -> 55.73, 30.5 -> 41.3; MEDI 43.83 -> 44.91, 13.3 -> 29.5; nonlinear TV 54.15 -> 53.89, 26.5
#: -> 42.0; SS-TV 46.44 -> 46.23, 9.9 -> 19.5; RTS 60.26 -> 53.87, 30.1 -> 26.6; L2 82.92 -> 71.19, 34.0 -> 22.4.
#: On ``noisy_1p5mm_3echo`` (TFI 36.74 -> 32.08, 9.5 -> 7.8): linear TV 51.72 -> 51.71, 22.7 -> 37.1; MEDI
#: 48.46 -> 46.61, 16.9 -> 29.2; RTS 52.96 -> 53.48, 26.7 -> 37.7; L2 81.30 -> 78.25, 79.2 -> 77.2. A number in
#: ``zero_fill_mm`` zero-fills with any inversion.
AUTO_ZERO_FILL_INVERSIONS = ("tfi",)
#: Where a k-space-recorded image rings: this far outside the head, in voxels (inner, outer distance).
RINGING_BAND_VOXELS = (3.0, 5.0)
#: Air far from the head, the noise's reference: farther than this, in voxels.
FAR_AIR_VOXELS = 12.0
#: Fewer far-air voxels than this and the data cannot be judged (a crop inside the head, a tight field of view).
MIN_FAR_AIR_VOXELS = 1000
#: The head: magnitude above this many times the far air's median, or above NOISE_FREE_FRACTION of its 99th
#: percentile, whichever is higher.
HEAD_NOISE_FACTOR = 4.0
NOISE_FREE_FRACTION = 0.05
#: Band-limited: the ringing band's mean power exceeds the far air's by more than this fraction of the 99th
#: percentile's square, and by more than RINGING_Z standard errors of that difference. On the validation suite
#: (README, "Zero-filling coarse scans") images recorded in k-space measured 1.06e-4 to 3.68e-4; images simulated
#: on their output grid, box-averaged heads and slabs and the project's phantom -2.8e-6 to 1.5e-5.
RINGING_THRESHOLD = 4e-5
RINGING_Z = 5.0


def cut_axes(magnitude: np.ndarray) -> tuple:
    """Per array axis, whether the field of view cuts the object at both of its ends (a slab's axis).

    A whole head's field of view ends in air on at least one side of every
    axis (the neck and the face may touch one face); a slab's faces along its
    thin axis both cut through the head. Zero-filling along a cut axis would
    make the periodic spectrum ring from one face into the other.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (n0, n1, n2)
        A magnitude image (the first echo's).

    Returns
    -------
    tuple of 3 bool

    Examples
    --------
    >>> slab = np.zeros((20, 20, 8)); slab[4:16, 4:16, :] = 1
    >>> cut_axes(slab)
    (False, False, True)
    """
    level = SIGNAL_FRACTION * np.percentile(magnitude, 99)
    cut = []
    for axis in range(3):
        faces = np.moveaxis(magnitude, axis, 0)
        cut.append(bool(min(np.mean(faces[0] > level), np.mean(faces[-1] > level)) > CUT_FACE_SHARE))
    return tuple(cut)


def ringing_excess(magnitude: np.ndarray) -> dict:
    """How much the air just outside the head rings, as an image cut off in k-space rings.

    A scanner reconstructs its image from a finite block of k-space, so each
    sharp edge (the scalp against air) rings: the air a few voxels outside the
    head holds a decaying oscillation on top of the noise. An image simulated
    on its own grid, or box-averaged from a finer one, has noise there and
    nothing else. The excess of mean power (magnitude squared) in
    :data:`RINGING_BAND_VOXELS` over the far air's (beyond
    :data:`FAR_AIR_VOXELS`) measures it; the noise's power cancels in the
    difference (Rician: power = signal power + 2 sigma^2).

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (n0, n1, n2)
        The first echo's magnitude, in any units (the excess is relative to
        its 99th percentile).

    Returns
    -------
    dict
        ``excess`` (the power difference over the 99th percentile's square),
        ``standard_error`` (of the same, from the spread of the far air's
        power), ``far_air_voxels`` and ``band_limited``: True, False, or None
        when there is too little air far from the head to judge.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cube = np.zeros((64, 64, 64)); cube[24:40, 24:40, 24:40] = 1.0
    >>> noise = 0.01 * (rng.standard_normal(cube.shape) + 1j * rng.standard_normal(cube.shape))
    >>> ringing_excess(np.abs(cube + noise))["band_limited"]
    False
    >>> spectrum = np.fft.fftshift(np.fft.fftn(np.pad(cube, 32)))[32:96, 32:96, 32:96]
    >>> recorded = np.fft.ifftn(np.fft.ifftshift(spectrum)) / 8
    >>> ringing_excess(np.abs(recorded + noise))["band_limited"]
    True
    """
    magnitude = np.asarray(magnitude, np.float64)
    top = float(np.percentile(magnitude, 99))
    result = {"excess": 0.0, "standard_error": 0.0, "far_air_voxels": 0, "band_limited": None}
    if not top > 0:
        return result
    # the noise floor from the field of view's corners, which hold air in a whole-head scan
    corner = [slice(0, max(1, n // 8)) for n in magnitude.shape]
    floor = float(np.median(np.concatenate([
        np.flip(magnitude, axes)[tuple(corner)].ravel()
        for axes in ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))])))
    head = magnitude > max(HEAD_NOISE_FACTOR * floor, NOISE_FREE_FRACTION * top)
    head = fill_holes(ndi.binary_closing(head, iterations=2))
    distance = ndi.distance_transform_edt(~head)
    power = (magnitude / top) ** 2
    far = power[distance > FAR_AIR_VOXELS]
    band = power[(distance > RINGING_BAND_VOXELS[0]) & (distance <= RINGING_BAND_VOXELS[1])]
    result["far_air_voxels"] = int(far.size)
    if far.size < MIN_FAR_AIR_VOXELS or band.size == 0:
        return result
    excess = float(band.mean() - far.mean())
    # noise power is exponentially distributed: its spread is its mean, in the band as in the far air
    spread = float(far.std())
    error = spread * float(np.sqrt(1.0 / band.size + 1.0 / far.size))
    result.update(excess=excess, standard_error=error,
                  band_limited=bool(excess > RINGING_THRESHOLD and excess > RINGING_Z * error))
    return result


def auto_solve_voxel_mm(voxel_size_mm: Sequence[float]) -> float:
    """The solving voxel (mm) ``zero_fill_mm="auto"`` asks for: :data:`AUTO_SOLVE_VOXEL_MM`, or half the largest voxel.

    Examples
    --------
    >>> auto_solve_voxel_mm((2.0, 2.0, 2.0)), auto_solve_voxel_mm((3.0, 3.0, 3.0))
    (1.0, 1.5)
    """
    return max(AUTO_SOLVE_VOXEL_MM, max(float(v) for v in voxel_size_mm) / 2.0)


def solving_voxel_mm(setting: Union[str, float, None], voxel_size_mm: Sequence[float],
                     inversion: str = "tfi") -> Optional[float]:
    """The solving voxel (mm) a ``PipelineConfig.zero_fill_mm`` setting asks for with this inversion method.

    None for None (the scan's grid) and for ``"auto"`` with an inversion
    outside :data:`AUTO_ZERO_FILL_INVERSIONS`; :func:`auto_solve_voxel_mm`
    for ``"auto"`` (whether the data are band-limited is the caller's test);
    else the number, whatever the inversion.

    Examples
    --------
    >>> voxel = (2.0, 2.0, 2.0)
    >>> solving_voxel_mm("auto", voxel), solving_voxel_mm(0.7, voxel), solving_voxel_mm(None, voxel)
    (1.0, 0.7, None)
    >>> solving_voxel_mm("auto", voxel, inversion="medi"), solving_voxel_mm(1.0, voxel, inversion="medi")
    (None, 1.0)
    """
    if setting is None or (setting == "auto" and inversion not in AUTO_ZERO_FILL_INVERSIONS):
        return None
    return auto_solve_voxel_mm(voxel_size_mm) if setting == "auto" else float(setting)


def solving_shape(shape: Sequence[int], voxel_size_mm: Sequence[float], solve_voxel_mm: Optional[float],
                  keep_axes: Sequence[bool] = (False, False, False)) -> tuple:
    """The grid the stages solve on: each coarse axis zero-filled to voxels of about ``solve_voxel_mm``.

    Parameters
    ----------
    shape : sequence of 3 int
        The scan's grid (array axes).
    voxel_size_mm : sequence of 3 float
        Its voxel size per axis, mm.
    solve_voxel_mm : float or None
        Target voxel size, mm. Axes whose voxel is at most
        :data:`COARSE_FACTOR` times it keep their size; None keeps the scan's
        grid.
    keep_axes : sequence of 3 bool
        Axes kept as they are whatever their voxel (:func:`cut_axes`).

    Returns
    -------
    tuple of 3 int
        The solving grid's shape; ``tuple(shape)`` when nothing is refined or
        the refined grid would hold more than :data:`MAX_VOXEL_GROWTH` times
        the scan's voxels.

    Examples
    --------
    >>> solving_shape((96, 112, 88), (2.0, 2.0, 2.0), 1.0)
    (192, 224, 176)
    >>> solving_shape((192, 224, 88), (1.0, 1.0, 2.0), 1.0)
    (192, 224, 176)
    >>> solving_shape((64, 80, 60), (3.0, 3.0, 3.0), 1.0)  # 27 times the voxels: the scan's grid
    (64, 80, 60)
    """
    shape = tuple(int(n) for n in shape)
    if solve_voxel_mm is None:
        return shape
    fine = tuple(int(round(n * v / solve_voxel_mm)) if v > COARSE_FACTOR * solve_voxel_mm and not keep else n
                 for n, v, keep in zip(shape, voxel_size_mm, keep_axes))
    if np.prod(fine, dtype=float) > MAX_VOXEL_GROWTH * np.prod(shape, dtype=float):
        return shape
    return fine


def _resized_spectrum(spectrum: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centred spectrum (last three axes) zero-padded or cropped to ``shape`` (DC at index ``n // 2`` in both)."""
    out = np.zeros((*spectrum.shape[:-3], *shape), spectrum.dtype)
    source, target = [Ellipsis], [Ellipsis]
    for n, m in zip(spectrum.shape[-3:], shape):
        kept = min(n, m)
        source.append(slice(n // 2 - kept // 2, n // 2 - kept // 2 + kept))
        target.append(slice(m // 2 - kept // 2, m // 2 - kept // 2 + kept))
    out[tuple(target)] = spectrum[tuple(source)]
    return out


def fourier_resample(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Band-limited resampling of a volume's last three axes onto ``shape`` (zero-filled or cropped spectrum).

    The values keep their scale (a constant stays that constant); leading axes
    are resampled one by one. Complex in, complex out; real in, real out.

    Examples
    --------
    >>> volume = np.cos(2 * np.pi * np.arange(8) / 8)[:, None, None] * np.ones((8, 4, 4))
    >>> fine = fourier_resample(volume, (16, 4, 4))
    >>> bool(np.allclose(fine[::2], volume)), bool(np.allclose(fourier_resample(fine, (8, 4, 4)), volume))
    (True, True)
    """
    axes = (-3, -2, -1)
    spectrum = scipy.fft.fftshift(_fft.fftn(volume), axes=axes)
    resized = _resized_spectrum(spectrum, shape)
    result = _fft.ifftn(scipy.fft.ifftshift(resized, axes=axes))
    result *= np.prod(shape, dtype=float) / np.prod(volume.shape[-3:], dtype=float)
    return result if np.iscomplexobj(volume) else result.real


def zero_filled_acquisition(acquisition: MultiEchoGRE, shape: Sequence[int]) -> MultiEchoGRE:
    """The acquisition's complex echoes interpolated onto ``shape`` by zero-filling their spectra.

    The affine's axes are scaled so that the new grid covers the same field
    of view with its first voxel's centre where the scan's is; B0's
    direction, the echo times, the readout and the phase's sign stay. Voxels
    nearest a scan voxel that was not finite stay excluded.
    """
    shape = tuple(int(n) for n in shape)
    factors = [m / n for m, n in zip(shape, acquisition.spatial_shape)]
    magnitude = np.empty((acquisition.n_echoes, *shape), np.float32)
    phase = np.empty_like(magnitude)
    for echo in range(acquisition.n_echoes):
        signal = fourier_resample(acquisition.magnitude[echo] * np.exp(1j * acquisition.phase[echo]), shape)
        magnitude[echo] = np.abs(signal)
        phase[echo] = np.angle(signal)
    affine = None
    if acquisition.affine is not None:
        affine = np.array(acquisition.affine, dtype=float)
        affine[:3, :3] /= np.asarray(factors)[None, :]
    fine = MultiEchoGRE(magnitude, phase, acquisition.echo_times_s, acquisition.b0_tesla, affine=affine,
                        voxel_size_mm=tuple(v / f for v, f in zip(acquisition.voxel_size_mm, factors)),
                        b0_direction=acquisition.b0_direction, phase_sign=acquisition.phase_sign,
                        bipolar=acquisition.bipolar)
    if acquisition.invalid_voxels.any():
        fine.invalid_voxels = nearest_upsampled(acquisition.invalid_voxels, shape)
        fine.magnitude[:, fine.invalid_voxels] = 0
        fine.phase[:, fine.invalid_voxels] = 0
    return fine


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """Index along a ``source``-voxel axis nearest each of ``target`` voxels (shared first centre)."""
    return np.minimum(np.round(np.arange(target) * source / target).astype(int), source - 1)


def nearest_upsampled(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``volume`` on the finer grid ``shape``: each fine voxel takes the nearest scan voxel's value."""
    return volume[np.ix_(*[_nearest_indices(n, m) for n, m in zip(volume.shape, shape)])]


def nearest_samples(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``volume`` (on a fine grid) at the voxels of ``shape`` nearest each coarse voxel's centre.

    Leading axes (e.g. echoes) are kept; the last three are resampled.
    """
    spatial = volume.shape[-3:]
    index = np.ix_(*[_nearest_indices(m, n) for m, n in zip(spatial, shape)])
    return volume[(Ellipsis, *index)]


def _extended(values: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``values`` inside ``mask``, outside it a smooth continuation (Gaussian-weighted means at growing widths).

    A map that is 0 beyond its mask jumps at the mask's edge, and cropping its
    spectrum would ring into the brain; continued smoothly, it does not.
    Leading axes of ``values`` are maps on the same mask.
    """
    result = np.where(mask, values, 0.0)
    filled = mask.copy()
    for width_mm in (2.0, 4.0, 8.0, 16.0):
        numerator, denominator = masked_smoothing(values, mask, width_mm, voxel_size_mm)
        reached = ~filled & (denominator > 1e-6)
        result[..., reached] = numerator[..., reached] / denominator[reached]
        filled |= reached
    return result


def band_limited_back(values: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
                      shape: Sequence[int]) -> np.ndarray:
    """Maps solved on the fine grid, brought back to the scan's grid ``shape`` with the scan's band only.

    Parameters
    ----------
    values : numpy.ndarray, shape (..., m0, m1, m2)
        The map (or maps, along leading axes) on the fine grid, meaningful
        inside ``mask``.
    mask : numpy.ndarray of bool, shape (m0, m1, m2)
    voxel_size_mm : sequence of 3 float
        The fine grid's voxel size, mm.
    shape : sequence of 3 int
        The scan's grid.

    Returns
    -------
    numpy.ndarray of float32, shape ``(..., *shape)``
        The maps band-limited to the scan's k-space band and sampled on its
        grid (outside the mask's continuation included: the caller masks it).
    """
    if not mask.any():
        return np.zeros((*values.shape[:-3], *shape), np.float32)
    extended = _extended(values.astype(np.float64), mask, voxel_size_mm)
    return fourier_resample(extended, shape).astype(np.float32)
