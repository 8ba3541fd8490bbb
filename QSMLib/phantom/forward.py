"""Forward field simulation without the inverse crime: supersampled dipole fields, isolation, shim."""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np
import scipy.fft

from .. import _fft
from .._threads import thread_count
from ..dipole import dipole_kernel, dipole_response, unit_vector
from ..errors import QSMInputError
from .rasterise import block_mean, head_labels


def supersampled_fields(
    sources: Sequence[np.ndarray],
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    supersample: int = 2,
    pad_factor: float = 1.5,
) -> list[np.ndarray]:
    """Dipole fields of fine-grid sources, averaged down to the coarse grid.

    Equivalent to convolving each source with the unit dipole on the fine,
    zero-padded grid and averaging each ``supersample**3`` block, but the
    averaging and decimation are done in k-space (box-filter transfer and
    aliasing sum), so only the forward transform runs on the fine grid and
    two sources share one complex FFT.

    Parameters
    ----------
    sources : sequence of numpy.ndarray, shape (s n0, s n1, s n2)
        Susceptibility on the fine grid (any unit; ppm gives ppm), with
        ``s = supersample``; zero outside the volume.
    voxel_size_mm : sequence of 3 float
        Coarse (output) voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates.
    supersample : int
        Fine samples per coarse voxel and axis (1 = plain convolution).
    pad_factor : float
        Zero padding per axis, relative to the coarse shape, before the
        circular convolution (the fine grid is padded to ``supersample``
        times the padded coarse shape).

    Returns
    -------
    list of numpy.ndarray of float32, shape (n0, n1, n2)
        Relative field shift of each source, in the unit of the source; the
        k = 0 term is 0 as in :func:`QSMLib.dipole.dipole_kernel`.
    """
    s = int(supersample)
    fine_shape = tuple(int(n) for n in sources[0].shape)
    if s < 1 or any(n % s for n in fine_shape) or len(fine_shape) != 3:
        raise QSMInputError(f"Fine sources of shape {fine_shape} are not 3D multiples of supersample={s}.")
    coarse = tuple(n // s for n in fine_shape)
    padded_coarse = _fft.padded_shape(coarse, pad_factor)
    padded_fine = tuple(s * n for n in padded_coarse)
    fine_voxel = [float(v) / s for v in voxel_size_mm]
    b = unit_vector(b0_direction).astype(np.float32)
    k_fine = [k.reshape(-1) for k in _fft.frequency_grids(padded_fine, fine_voxel, real=False)]
    # The box average g[n] = mean_o f[n + o] (o = 0..s-1 per axis) has the transfer
    # exp(i pi k (s-1)/N) * dirichlet(k). At k = m + a * Nc the phase splits into a
    # factor of m alone (applied once, after folding) and a constant per alias block.
    dirichlet = [_dirichlet(n, s) for n in padded_fine]
    region = tuple(slice(0, n) for n in fine_shape)
    fields: list[np.ndarray] = []
    for first in range(0, len(sources), 2):
        pair = sources[first : first + 2]
        spectrum = np.zeros(padded_fine, np.complex64)
        spectrum.real[region] = pair[0]
        if len(pair) == 2:
            spectrum.imag[region] = pair[1]
        spectrum = scipy.fft.fftn(spectrum, workers=thread_count(), overwrite_x=True)
        folded = np.zeros(padded_coarse, np.complex64)
        for alias in itertools.product(range(s), repeat=3):
            block = tuple(slice(a * n, (a + 1) * n) for a, n in zip(alias, padded_coarse))
            nyquist = [
                n // 2 - sl.start if n % 2 == 0 and sl.start <= n // 2 < sl.stop else None
                for n, sl in zip(padded_fine, block)
            ]
            k0, k1, k2 = (k[sl] for k, sl in zip(k_fine, block))
            kernel = dipole_response(k0, k1, k2, b, origin=alias == (0, 0, 0), nyquist=nyquist)
            r0, r1, r2 = (r[sl] for r, sl in zip(dirichlet, block))
            kernel *= (r0[:, None] * r1[None, :])[:, :, None]
            kernel *= r2[None, None, :]
            term = spectrum[block]
            np.multiply(term, kernel, out=term)
            del kernel
            constant = complex(np.exp(1j * np.pi * sum(alias) * (s - 1) / s))
            if abs(constant - 1.0) > 1e-12:
                term *= np.complex64(constant)
            folded += term
        del spectrum, term
        p0, p1, p2 = (np.exp(1j * np.pi * np.arange(n) * (s - 1) / (s * n)).astype(np.complex64) for n in padded_coarse)
        folded *= (p0[:, None] * p1[None, :])[:, :, None] * np.float32(1.0 / s**3)
        folded *= p2[None, None, :]
        field = scipy.fft.ifftn(folded, workers=thread_count(), overwrite_x=True)[tuple(slice(0, n) for n in coarse)]
        fields.append(np.ascontiguousarray(field.real, dtype=np.float32))
        if len(pair) == 2:
            fields.append(np.ascontiguousarray(field.imag, dtype=np.float32))
    return fields


def isolation_correction(
    shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float],
    tables: Sequence[np.ndarray],
    *,
    pad_factor: float = 1.5,
    resolution_mm: float = 8.0,
    far_pad_factor: float = 6.0,
    rotation: Optional[np.ndarray] = None,
) -> list[np.ndarray]:
    """Remove the field of the periodic copies that a padded FFT convolution adds.

    A convolution on a grid padded by ``pad_factor`` computes the field of
    the phantom plus that of its periodic copies one period away. For the
    head's -9.4 ppm bulk this is far from negligible (about 25 % of the
    unshimmed in-brain field at a padding of 1.5). The copies' field is
    smooth, so it is estimated on a coarse grid covering exactly one period:
    the field computed with that period minus the field computed with a far
    larger one, interpolated to the output grid. Adding the result to
    :func:`supersampled_fields` output makes it the field of an isolated head.

    Parameters
    ----------
    shape, voxel_size_mm : sequence of 3
        Output grid (array axes).
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates.
    tables : sequence of numpy.ndarray
        Label -> susceptibility look-up tables (see :func:`susceptibility_tables`).
    pad_factor : float
        The padding the fields were computed with.
    resolution_mm : float
        Sample spacing of the coarse estimate.
    far_pad_factor : float
        Extent of the reference convolution's domain, in FOVs per axis
        (its copies are that far away). No correction when ``pad_factor``
        is already this large.
    rotation : numpy.ndarray, shape (3, 3), optional
        Orientation of the output grid in the head frame (see
        :func:`head_labels`); None: aligned.

    Returns
    -------
    list of numpy.ndarray of float32, shape ``shape``
        Correction per table, in the unit of the tables.
    """
    shape = tuple(int(n) for n in shape)
    if pad_factor >= far_pad_factor:
        return [np.zeros(shape, np.float32) for _ in tables]
    voxel = np.asarray(voxel_size_mm, np.float64)
    period_mm = np.asarray(_fft.padded_shape(shape, pad_factor)) * voxel
    far_pad = float(max(1.0, np.max(far_pad_factor * np.asarray(shape) * voxel / period_mm)))
    samples = [scipy.fft.next_fast_len(int(math.ceil(p / resolution_mm)), real=True) for p in period_mm]
    spacing = period_mm / np.asarray(samples)
    start = -(np.asarray(shape) / 2.0) * voxel  # lower edge of the first output voxel
    fov_end = start + np.asarray(shape) * voxel
    axes = []
    for m, w, x0 in zip(samples, spacing, start):
        sub = np.arange(2 * m, dtype=np.float64)
        axes.append(x0 + (sub + 0.5) * w / 2.0)
    labels = head_labels(axes, dtype=np.uint8, rotation=rotation)
    # the fine simulation sees only what lies inside the FOV: the rest of the period is air
    outside = [(a < x0) | (a >= x1) for a, x0, x1 in zip(axes, start, fov_end)]
    labels[outside[0], :, :] = 0
    labels[:, outside[1], :] = 0
    labels[:, :, outside[2]] = 0
    chi = block_mean(labels, np.stack([np.asarray(t, np.float32) for t in tables]), 2)
    # linear interpolation to the output voxel centres, one axis at a time
    weights = [
        _linear_weights(((np.arange(n) + 0.5) * v) / w - 0.5, m) for n, v, w, m in zip(shape, voxel, spacing, samples)
    ]
    far_shape = _fft.padded_shape(samples, far_pad)
    corrections = []
    for source in chi:
        near = _smooth_dipole_field(source, spacing, b0_direction, samples)
        far = _smooth_dipole_field(source, spacing, b0_direction, far_shape)
        difference = far - near
        difference = np.tensordot(weights[0], difference, axes=(1, 0))
        difference = np.tensordot(weights[1], difference, axes=(1, 1)).transpose(1, 0, 2)
        flat = np.ascontiguousarray(difference).reshape(-1, difference.shape[2]) @ weights[2].T
        corrections.append(flat.reshape(shape).astype(np.float32, copy=False))
    return corrections


def _linear_weights(points: np.ndarray, size: int) -> np.ndarray:
    """Matrix (len(points), size) of linear interpolation at fractional indices (clamped at the ends)."""
    points = np.clip(points, 0.0, size - 1.0)
    low = np.minimum(np.floor(points).astype(int), size - 2) if size > 1 else np.zeros(points.size, int)
    frac = points - low
    matrix = np.zeros((points.size, size), np.float32)
    rows = np.arange(points.size)
    matrix[rows, low] = 1.0 - frac
    if size > 1:
        matrix[rows, low + 1] += frac
    return matrix


def _smooth_dipole_field(
    chi: np.ndarray, spacing_mm: Sequence[float], b0_direction: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    # The copies' field is harmonic over the head, so a Gaussian blur of two samples leaves it
    # unchanged while it removes the grid-dependent sharp near field, which would not cancel
    # between the two domains.
    spectrum = _fft.rfftn(_fft.pad(chi, shape))
    spectrum *= dipole_kernel(shape, spacing_mm, b0_direction)
    k0, k1, k2 = _fft.frequency_grids(shape, spacing_mm)
    sigma = 2.0 * max(float(w) for w in spacing_mm)
    g = [np.exp(-2.0 * (np.pi * sigma * k) ** 2).astype(np.float32) for k in (k0, k1, k2)]
    spectrum *= g[0] * g[1]
    spectrum *= g[2]
    return _fft.crop(_fft.irfftn(spectrum, shape), chi.shape).astype(np.float32)


def band_limited_samples(fine_signal: np.ndarray, supersample: int) -> np.ndarray:
    """A fine-grid complex signal as a scanner records it on a grid ``supersample`` times coarser.

    A scanner's voxel is not the mean of the signal over a box but the
    inverse Fourier transform of the k-space samples within its band, so the
    fine signal's spectrum is cropped to the coarse grid's band. Coarse voxel
    ``j`` covers fine voxels ``s j`` to ``s j + s - 1``; the spectrum is
    moved by ``(s - 1) / 2`` fine voxels (a phase ramp) so that the samples
    lie at the voxels' centres, where block means of the fine grid (the
    suite's truths) lie too. The spectrum is periodic: the fine box must hold
    the whole object, or reach beyond the output grid by a margin.

    Parameters
    ----------
    fine_signal : numpy.ndarray of complex or float, shape (s n0, s n1, ...)
        The signal on the fine grid, ``s = supersample`` (a real map, such
        as a susceptibility, comes back real).
    supersample : int
        Fine samples per coarse voxel and axis.

    Returns
    -------
    numpy.ndarray of complex, or float for a real input (the input's precision), shape (n0, n1, ...)
        The band-limited signal at the coarse voxels' centres.

    Examples
    --------
    A signal whose frequencies all lie within the coarse band comes back as
    its values at the centres of the coarse voxels:

    >>> import numpy as np
    >>> x = np.arange(16)
    >>> fine = np.exp(2j * np.pi * 3 * x / 16)
    >>> coarse = band_limited_samples(fine, 2)
    >>> bool(np.allclose(coarse, np.exp(2j * np.pi * 3 * (2 * np.arange(8) + 0.5) / 16)))
    True
    """
    s = int(supersample)
    if s < 1 or any(n % s for n in fine_signal.shape):
        raise QSMInputError(f"A fine signal of shape {fine_signal.shape} is not a multiple of supersample={s}.")
    coarse = tuple(n // s for n in fine_signal.shape)
    spectrum = scipy.fft.fftn(fine_signal, workers=thread_count())
    # the coarse band in fftfreq order: 0 .. up to Nyquist, then the negative frequencies (Nyquist among them)
    band = spectrum[np.ix_(*[np.r_[0:(n + 1) // 2, s * n - n // 2:s * n] for n in coarse])]
    del spectrum
    for axis, n in enumerate(coarse):
        ramp = np.exp(2j * np.pi * np.fft.fftfreq(n) * ((s - 1) / (2.0 * s)))
        band *= ramp.astype(band.dtype).reshape([-1 if a == axis else 1 for a in range(band.ndim)])
    samples = scipy.fft.ifftn(band, workers=thread_count(), overwrite_x=True) / band.dtype.type(s ** band.ndim)
    return samples if np.iscomplexobj(fine_signal) else samples.real


def _dirichlet(n: int, s: int) -> np.ndarray:
    """``sin(pi k s / n) / (s sin(pi k / n))`` for k = 0..n-1 (1 at k = 0), float32."""
    k = np.arange(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.sin(np.pi * k * s / n) / (s * np.sin(np.pi * k / n))
    ratio[0] = 1.0
    return ratio.astype(np.float32)


def solid_harmonics(axes_mm: Sequence[np.ndarray], order: int, scale_mm: float = 100.0) -> list[np.ndarray]:
    """Real solid harmonics up to degree ``order`` (at most 2) on a grid.

    These are the fields a scanner's shim coils can make (they satisfy
    Laplace's equation), so removing a fit of them leaves the background
    field harmonic.

    Parameters
    ----------
    axes_mm : sequence of 3 numpy.ndarray
        Sample positions in mm per array axis.
    order : int
        0, 1 or 2 (1, 4 or 9 functions).
    scale_mm : float
        Length that coordinates are divided by, for conditioning.

    Returns
    -------
    list of numpy.ndarray of float32, broadcastable to the grid
    """
    if order not in (0, 1, 2):
        raise QSMInputError(f"Shim order must be 0, 1 or 2 (or None for no shim), got {order!r}.")
    x = (np.asarray(axes_mm[0], np.float32) / scale_mm)[:, None, None]
    y = (np.asarray(axes_mm[1], np.float32) / scale_mm)[None, :, None]
    z = (np.asarray(axes_mm[2], np.float32) / scale_mm)[None, None, :]
    terms = [np.ones((1, 1, 1), np.float32)]
    if order >= 1:
        terms += [x, y, z]
    if order >= 2:
        terms += [x * y, y * z, x * z, x * x - y * y, 2 * z * z - x * x - y * y]
    return terms


def shim_field(field_hz: np.ndarray, mask: np.ndarray, axes_mm: Sequence[np.ndarray], order: int) -> np.ndarray:
    """Field of an ideal shim of the given order over ``mask``: minus the least-squares fit.

    Parameters
    ----------
    field_hz : numpy.ndarray, shape (n0, n1, n2)
        Field to shim, Hz.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Shim volume.
    axes_mm : sequence of 3 numpy.ndarray
        Voxel-centre positions in mm per array axis.
    order : int
        Highest solid-harmonic degree (0, 1 or 2).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
        Field added by the shim coils, Hz (``field_hz + result`` is shimmed).
    """
    # degree <= 2 solid harmonics span a rotation-invariant space, so fitting them in
    # array axes equals fitting the scanner's shim terms, oblique or not
    terms = solid_harmonics(axes_mm, order)
    shape = field_hz.shape
    index = np.nonzero(mask)
    # a regular subsample of the mask is plenty for 9 smooth functions
    step = max(1, index[0].size // 200_000)
    index = tuple(i[::step] for i in index)
    design = np.stack([np.broadcast_to(t, shape)[index] for t in terms], axis=1).astype(np.float64)
    coefficients = np.linalg.lstsq(design, field_hz[index].astype(np.float64), rcond=None)[0]
    shim = np.zeros(shape, np.float32)
    for coefficient, term in zip(coefficients, terms):
        shim -= np.float32(coefficient) * term
    return shim
