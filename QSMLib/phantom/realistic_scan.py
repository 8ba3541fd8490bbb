"""Multi-echo GRE of the realistic head (:mod:`.realistic`), simulated on a finer grid than the output.

The field is computed on a box that holds the field of view plus a margin,
sampled ``supersample`` times finer per axis and averaged down in k-space
(:func:`.forward.supersampled_fields`). Everything the fine box does not
hold, the rest of the head (neck, face, the brain above and below a slab) and
the periodic copies that FFT convolution adds, is added from a coarse
simulation of the whole isolated head (:func:`outside_field_correction`).
The signal model is that of :func:`.head.simulate_head`: a second-order shim
over the brain, intravoxel dephasing, an echo-independent phase offset, an
optional bipolar readout error and complex Gaussian noise. With
``signal="kspace"`` each echo's complex signal is made on the fine grid and
its spectrum cropped to the output's band instead, as a scanner records it
(:func:`.forward.band_limited_samples`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import scipy.fft
from scipy import ndimage

from .. import _fft
from ..acquisition import MultiEchoGRE
from ..dipole import forward_field
from ..errors import QSMInputError
from ..units import ppm_to_hz
from .deform import AnatomyWarp, receive_bias_field, warped_model
from .forward import _linear_weights, _smooth_dipole_field, band_limited_samples, shim_field, supersampled_fields
from .head import HeadPhantom, _three_positive
from .realistic import _BRAIN_LABEL_MAX, REALISTIC_LABEL_NAMES, RealisticModel, realistic_model, rotation_about_axes
from .signal import bipolar_error_map, dephasing_factor, gre_signal, phase_offset_map

#: MNI point at the centre of the default field of view.
DEFAULT_CENTRE_MNI = (0.0, -18.0, 6.0)


def grid_geometry(
    shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    *,
    centre_mni: Sequence[float] = DEFAULT_CENTRE_MNI,
    head_rotation_deg: Sequence[float] = (0.0, 0.0),
    slab_rotation_deg: Sequence[float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine, B0 direction and grid-to-MNI rotation of an acquisition of the realistic head.

    The scanner frame has B0 along z. The head is rotated in the scanner by
    ``head_rotation_deg`` (pitch about left-right, roll about
    anterior-posterior), the voxel grid by ``slab_rotation_deg``. Equal
    rotations: the grid follows the head and B0 is oblique to both (a tilted
    head); a slab rotation alone: oblique slices through an upright head.

    Returns
    -------
    affine : numpy.ndarray, shape (4, 4)
        Array index -> scanner mm; the MNI point ``centre_mni`` at the grid centre.
    b0_direction : numpy.ndarray, shape (3,)
        B0 in array-axis coordinates.
    grid_to_mni : numpy.ndarray, shape (3, 3)
        Rotation from grid-frame offsets (mm) to MNI offsets.
    """
    head = rotation_about_axes(*head_rotation_deg)
    grid = rotation_about_axes(*slab_rotation_deg)
    matrix = grid @ np.diag([float(v) for v in voxel_size_mm])
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = head @ np.asarray(centre_mni, np.float64) - matrix @ ((np.asarray(shape, np.float64) - 1.0) / 2.0)
    b0_direction = grid.T @ np.array([0.0, 0.0, 1.0])
    return affine, b0_direction, head.T @ grid


def _head_extent_in_grid(model: RealisticModel, grid_to_mni: np.ndarray, centre_mni: np.ndarray):
    low, high = model.head_bounds_mni()
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    grid = (corners - centre_mni) @ grid_to_mni  # rows: grid_to_mni.T @ (corner - centre)
    return grid.min(axis=0), grid.max(axis=0)


def sample_on_grid(
    model: RealisticModel,
    axes_mm: Sequence[np.ndarray],
    grid_to_mni: np.ndarray,
    centre_mni: Sequence[float],
    *,
    lesions: bool = True,
) -> dict[str, np.ndarray]:
    """Model properties at the points of a grid (see :meth:`.realistic.RealisticModel.sample`).

    ``axes_mm`` are grid-frame positions per array axis (mm, origin at
    ``centre_mni``); ``grid_to_mni`` rotates grid-frame offsets into MNI.
    An unrotated grid is interpolated axis by axis (much faster).
    """
    return model.sample(*grid_points(axes_mm, grid_to_mni, centre_mni), lesions=lesions)


def grid_points(
    axes_mm: Sequence[np.ndarray], grid_to_mni: np.ndarray, centre_mni: Sequence[float]
) -> list[np.ndarray]:
    """MNI coordinates (mm, float32) of a grid's points, as :func:`sample_on_grid` takes them.

    Three arrays, x, y and z; for an unrotated grid each varies along its
    own axis only (shapes (n0, 1, 1), (1, n1, 1), (1, 1, n2)), otherwise
    each has the grid's shape.
    """
    rotation = np.asarray(grid_to_mni, np.float64)
    centre = np.asarray(centre_mni, np.float64)
    g = [np.asarray(a, np.float64).reshape([-1 if j == i else 1 for j in range(3)]) for i, a in enumerate(axes_mm)]
    if np.allclose(rotation, np.eye(3), rtol=0.0, atol=1e-12):
        return [(centre[i] + g[i]).astype(np.float32) for i in range(3)]
    shape = tuple(len(a) for a in axes_mm)
    return [np.broadcast_to(centre[i] + rotation[i, 0] * g[0] + rotation[i, 1] * g[1] + rotation[i, 2] * g[2],
                            shape).astype(np.float32) for i in range(3)]


def outside_field_correction(
    model: RealisticModel,
    box_shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float],
    grid_to_mni: np.ndarray,
    centre_mni: Sequence[float],
    *,
    pad_factor: float,
    lesions: bool = True,
    resolution_mm: float = 3.0,
    far_pad_factor: float = 3.0,
) -> list[np.ndarray]:
    """Field of what a padded FFT convolution over the box misses, on the box's voxel centres.

    The fine simulation sees only the box (air around it) and adds the field
    of its periodic copies. This returns, for the total and the local
    susceptibility, the field of the isolated whole head minus that of the
    box's contents repeated with the simulation's period, both computed on a
    coarse lattice of spacing about ``resolution_mm`` and interpolated
    linearly. Both terms are smooth inside the box where the margin keeps the
    outside sources away (see :func:`.forward.isolation_correction`, the same
    idea for a head that fits in the box).

    Returns
    -------
    list of 2 numpy.ndarray of float32, shape ``box_shape``
        Corrections of the total field (ppm, relative to air) and of the
        local field (ppm), in array axes.
    """
    box_shape = tuple(int(n) for n in box_shape)
    voxel = np.asarray(voxel_size_mm, np.float64)
    centre = np.asarray(centre_mni, np.float64)
    period_mm = np.asarray(_fft.padded_shape(box_shape, pad_factor)) * voxel
    samples = np.array([scipy.fft.next_fast_len(int(math.ceil(p / resolution_mm)), real=True) for p in period_mm])
    spacing = period_mm / samples
    box_low = -(np.asarray(box_shape) / 2.0) * voxel
    box_high = box_low + np.asarray(box_shape) * voxel
    head_low, head_high = _head_extent_in_grid(model, grid_to_mni, centre)
    first = np.minimum(np.floor((head_low - box_low) / spacing).astype(int) - 1, 0)
    last = np.maximum(np.ceil((head_high - box_low) / spacing).astype(int) + 1, samples)
    far_counts = last - first

    def lattice_chi(start: np.ndarray, counts: np.ndarray, inside_box_only: bool) -> list[np.ndarray]:
        # two sub-samples per lattice cell and axis, averaged: the cell's mean susceptibility
        axes = [box_low[i] + (start[i] + (np.arange(2 * counts[i]) + 0.5) / 2.0) * spacing[i] for i in range(3)]
        values = {"chi_air_ppm": [], "chi_local_ppm": []}
        for plane in range(0, axes[0].size, 16):
            sampled = sample_on_grid(model, (axes[0][plane:plane + 16], axes[1], axes[2]), grid_to_mni, centre,
                                     lesions=lesions)
            g0 = axes[0][plane:plane + 16][:, None, None]
            g1, g2 = axes[1][None, :, None], axes[2][None, None, :]
            if inside_box_only:
                outside = ((g0 < box_low[0]) | (g0 >= box_high[0])) | ((g1 < box_low[1]) | (g1 >= box_high[1]))
                outside = outside | ((g2 < box_low[2]) | (g2 >= box_high[2]))
                outside = np.broadcast_to(outside, sampled["label"].shape)
            for key in values:
                part = sampled[key]
                if inside_box_only:
                    part = np.where(outside, 0.0, part)
                values[key].append(part.astype(np.float32))
        result = []
        for key in ("chi_air_ppm", "chi_local_ppm"):
            fine = np.concatenate(values[key], axis=0)
            n0, n1, n2 = (s // 2 for s in fine.shape)
            result.append(fine.reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5), dtype=np.float32))
        return result

    near = lattice_chi(np.zeros(3, int), samples, True)
    far = lattice_chi(first, far_counts, False)
    far_shape = _fft.padded_shape(tuple(int(c) for c in far_counts), far_pad_factor)
    # lattice cell j of the near domain is cell j - first of the far domain
    offset = tuple(slice(-f, -f + s) for f, s in zip(first, samples))
    weights = [
        _linear_weights(((np.arange(n) + 0.5) * v) / w - 0.5, m)
        for n, v, w, m in zip(box_shape, voxel, spacing, samples)
    ]
    corrections = []
    for near_chi, far_chi in zip(near, far):
        near_field = _smooth_dipole_field(near_chi, spacing, b0_direction, tuple(int(s) for s in samples))
        far_field = _smooth_dipole_field(far_chi, spacing, b0_direction, far_shape)[offset]
        difference = far_field - near_field
        difference = np.tensordot(weights[0], difference, axes=(1, 0))
        difference = np.tensordot(weights[1], difference, axes=(1, 1)).transpose(1, 0, 2)
        flat = np.ascontiguousarray(difference).reshape(-1, difference.shape[2]) @ weights[2].T
        corrections.append(flat.reshape(box_shape).astype(np.float32, copy=False))
    return corrections


#: MNI box (mm: lower corner, size) and spacing of :func:`tissue_texture`'s random field.
_TEXTURE_BOX_MM = ((-100.0, -130.0, -90.0), (200.0, 240.0, 200.0))
_TEXTURE_STEP_MM = 0.75


def tissue_texture(seed: int, sd_ppb: float, stream: int = 1) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """Random susceptibility texture fixed in MNI space: what a piecewise-smooth model lacks.

    In-vivo susceptibility maps vary within every tissue (fibre orientation,
    myelin, iron, small vessels) where the realistic model is smooth; that
    variation makes a total variation prior nearly blind to smooth errors
    added to it. The texture is white noise smoothed at 1, 2.5 and 5 mm
    (equal parts), scaled to ``sd_ppb`` (ppb) standard deviation, on a
    0.75 mm MNI grid; positions are interpolated linearly, so every chunk
    and grid of a case sees the same texture. The white noise comes from
    ``numpy.random.default_rng([seed, stream])``, a stream apart from the
    case's noise (``default_rng(seed)``).

    Returns
    -------
    callable
        ``texture(points)``: ppm at MNI points ``(x, y, z)`` (arrays that
        broadcast, as :func:`.realistic_scan.grid_points` gives them).
    """
    lower, size = (np.asarray(v) for v in _TEXTURE_BOX_MM)
    white = np.random.default_rng([seed, stream]).standard_normal(
        tuple(int(n) for n in size / _TEXTURE_STEP_MM)).astype(np.float32)
    field = sum(ndimage.gaussian_filter(white, sigma_mm / _TEXTURE_STEP_MM) for sigma_mm in (1.0, 2.5, 5.0))
    del white
    field *= np.float32(sd_ppb * 1e-3 / field.std())

    def texture(points: Sequence[np.ndarray]) -> np.ndarray:
        shape = np.broadcast_shapes(*(np.shape(p) for p in points))
        coordinates = [(np.broadcast_to(p, shape) - lower[i]) / _TEXTURE_STEP_MM for i, p in enumerate(points)]
        return ndimage.map_coordinates(field, coordinates, order=1, mode="nearest").astype(np.float32)

    return texture


def add_brain_texture(sampled: dict[str, np.ndarray], points: Sequence[np.ndarray],
                      texture: Callable[[Sequence[np.ndarray]], np.ndarray]) -> None:
    """Add ``texture`` (:func:`tissue_texture`) to the brain's susceptibility in a model sample, in place.

    ``sampled`` is what :meth:`.realistic.RealisticModel.sample` returned at
    ``points`` (MNI mm, as :func:`grid_points` gives them); both its chi maps
    (relative to air and to CSF, ppm) take the texture at the brain's voxels
    (labels 1-20), where alone it is interpolated.
    """
    label = sampled["label"]
    brain = (label > 0) & (label <= _BRAIN_LABEL_MAX)
    values = texture([np.broadcast_to(p, label.shape)[brain] for p in points])
    for key in ("chi_air_ppm", "chi_local_ppm"):
        chi = np.array(sampled[key], dtype=np.float32)
        chi[brain] += values
        sampled[key] = chi


def simulate_realistic_head(
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    fov_mm: Sequence[float] = (192.0, 224.0, 176.0),
    centre_mni: Sequence[float] = DEFAULT_CENTRE_MNI,
    echo_times_s: Sequence[float] = (0.004, 0.008, 0.012, 0.016, 0.020),
    b0_tesla: float = 3.0,
    snr: Optional[float] = 100.0,
    head_rotation_deg: Sequence[float] = (0.0, 0.0),
    slab_rotation_deg: Sequence[float] = (0.0, 0.0),
    bipolar: bool = False,
    phase_offset: bool = True,
    supersample: int = 2,
    seed: int = 0,
    shim_order: Optional[int] = 2,
    lesions: bool = True,
    margin_mm: float = 24.0,
    pad_factor: float = 1.3,
    anatomy_warp: Optional[Mapping[str, Any]] = None,
    receive_bias: float = 0.0,
    signal: str = "box",
    texture_ppb: float = 0.0,
) -> HeadPhantom:
    """Simulate a multi-echo GRE scan of the realistic head.

    Parameters
    ----------
    voxel_size_mm : sequence of 3 float
        Output voxel size in mm per array axis (anisotropic allowed).
    fov_mm : sequence of 3 float
        Field of view per array axis, mm; shape = ``round(fov / voxel)``.
        The head spans about 180 x 235 x 255 mm with the neck; the brain
        145 x 180 x 155 mm. A thin FOV along an axis is a slab.
    centre_mni : sequence of 3 float
        MNI point (mm) at the centre of the FOV.
    echo_times_s : sequence of float
        Echo times in seconds.
    b0_tesla : float
        Field strength in tesla (fields and R2* scale with it).
    snr : float or None
        Mean brain M0 over the noise standard deviation of the real and of
        the imaginary part. None: no noise.
    head_rotation_deg, slab_rotation_deg : sequence of 2 float
        (pitch, roll) of the head and of the voxel grid in the scanner, see
        :func:`grid_geometry`.
    bipolar : bool
        Add a bipolar readout error to even echoes.
    phase_offset : bool
        Add a smooth echo-independent phase offset.
    supersample : int
        Fine samples per output voxel and axis (2 or more: no inverse crime).
    seed : int
        Seed of the phase offset and the noise (the anatomy is fixed).
    shim_order : int or None
        Order of the shim over the brain (0, 1, 2) or None.
    lesions : bool
        Include the calcification and the haemorrhages.
    margin_mm : float
        Margin around the FOV simulated on the fine grid; the rest of the
        head enters through :func:`outside_field_correction`.
    pad_factor : float
        Zero padding of the fine convolution per axis.
    anatomy_warp : mapping, optional
        Parameters of a :class:`.deform.AnatomyWarp`: another subject's
        anatomy (size, orientation, a smooth nonlinear deformation), in which
        ``centre_mni`` and the rotations are points and angles of the
        subject frame. None: the template's anatomy.
    receive_bias : float
        Amplitude of a smooth receive-coil sensitivity on the magnitude
        (:func:`.deform.receive_bias_field`, drawn from its own seed); 0: none.
    signal : {"box", "kspace"}
        How an output voxel's signal comes from the fine grid. ``"box"``:
        the field, M0 and decay are averaged over the voxel (the suite's
        heads), and the voxel's field gradient dephases it. ``"kspace"``: as
        a scanner records it, each echo's complex signal is computed on the
        fine grid (M0, R2* decay and the fine field) and its spectrum cropped
        to the output's band (:func:`.forward.band_limited_samples`); the
        field beyond the fine box and the shim, smooth, are added on the
        output grid. The signal then rings at bright edges and its voxels
        hold a sinc's partial volumes, as measured data do. The truth
        ``chi_ppm`` is the fine susceptibility band-limited the same way
        (its voxels hold the same partial volumes); the fields' truths stay
        block means. Measured on ``axial_1mm_3T``'s head (whole default
        pipeline, chi NRMSE): 18.3 % from ``"box"``, 21.6 % from
        ``"kspace"`` (:data:`.suite.CASES` against :data:`.suite.TWIN_CASES`; README, stop 45).
    texture_ppb : float
        Standard deviation (ppb) of a random texture added to the brain's
        susceptibility (:func:`tissue_texture`, fixed in the model's frame,
        drawn from ``seed``): in vivo, susceptibility varies within every
        tissue, where the model is smooth. 0: none.

    Returns
    -------
    HeadPhantom
        Acquisition and ground truth on the output grid; ``label_names`` are
        :data:`.realistic.REALISTIC_LABEL_NAMES`, the brain mask holds labels
        1-20, ``chi_ppm`` is relative to CSF.
    """
    voxel = _three_positive(voxel_size_mm, "voxel_size_mm")
    fov = _three_positive(fov_mm, "fov_mm")
    shape = tuple(int(round(f / v)) for f, v in zip(fov, voxel))
    echo_times = np.asarray(echo_times_s, np.float64).reshape(-1)
    if echo_times.size == 0 or np.any(echo_times <= 0) or np.any(np.diff(echo_times) <= 0) or echo_times.max() > 1:
        raise QSMInputError(f"Echo times must be positive, increasing seconds, got {echo_times.tolist()}.")
    if int(supersample) != supersample or supersample < 1:
        raise QSMInputError(f"supersample must be a positive integer, got {supersample!r}.")
    if snr is not None and not snr > 0:
        raise QSMInputError(f"snr must be positive (or None for no noise), got {snr!r}.")
    if signal not in ("box", "kspace"):
        raise QSMInputError(f"signal must be 'box' or 'kspace', got {signal!r}.")
    if not texture_ppb >= 0:
        raise QSMInputError(f"texture_ppb must be 0 (none) or a positive SD in ppb, got {texture_ppb!r}.")
    s = int(supersample)
    model = realistic_model() if anatomy_warp is None else warped_model(AnatomyWarp.from_dict(anatomy_warp))
    centre = np.asarray(centre_mni, np.float64)
    affine, b0_direction, grid_to_mni = grid_geometry(
        shape, voxel, centre_mni=centre, head_rotation_deg=head_rotation_deg, slab_rotation_deg=slab_rotation_deg)
    head_low, head_high = _head_extent_in_grid(model, grid_to_mni, centre)
    margin = []
    for n, v, lo, hi in zip(shape, voxel, head_low, head_high):
        beyond = max(-lo, hi) - n * v / 2.0  # mm of head outside the FOV on the worse side
        margin.append(int(math.ceil(min(margin_mm, max(beyond, 0.0)) / v)))
    box_shape = tuple(n + 2 * m for n, m in zip(shape, margin))
    rng = np.random.default_rng(seed)

    # --- fine sampling of the box, slab by slab: fine susceptibility kept, the rest averaged per voxel
    fine_axes = [((np.arange(s * n) + 0.5) / s - 0.5 - (n - 1) / 2.0) * v for n, v in zip(box_shape, voxel)]
    fine_air = np.empty(tuple(s * n for n in box_shape), np.float32)
    fine_local = np.empty_like(fine_air)
    crop = tuple(slice(m, m + n) for m, n in zip(margin, shape))
    # the chi truth: block means, or (recorded) the fine chi band-limited after the loop
    chi_truth = np.zeros(box_shape, np.float32)
    chi_air_mean = np.zeros(box_shape, np.float32)
    recorded = signal == "kspace"
    # each echo's box-averaged amplitude (a signal recorded in k-space makes its own from the fine grid)
    box_echo_times = () if recorded else echo_times
    amplitude = np.zeros((len(box_echo_times), *box_shape), np.float32)
    m0_mean = np.zeros(box_shape, np.float32)
    r2_scale = np.float32(b0_tesla / 3.0)
    # the fine grid's M0 and R2* (s^-1), for a signal recorded in k-space
    fine_m0 = np.empty_like(fine_air) if recorded else None
    fine_r2star = np.empty_like(fine_air) if recorded else None
    # a stream apart from the receive bias's (default_rng([seed, 1]))
    texture = tissue_texture(int(seed), float(texture_ppb), stream=2) if texture_ppb else None
    planes = 4 * s
    for plane in range(0, fine_axes[0].size, planes):
        points = grid_points((fine_axes[0][plane:plane + planes], fine_axes[1], fine_axes[2]), grid_to_mni, centre)
        sampled = model.sample(*points, lesions=lesions)
        piece_shape = sampled["label"].shape
        if texture is not None:
            add_brain_texture(sampled, points, texture)
        fine_air[plane:plane + planes] = sampled["chi_air_ppm"]
        fine_local[plane:plane + planes] = sampled["chi_local_ppm"]
        if recorded:
            fine_m0[plane:plane + planes] = sampled["m0"]
            fine_r2star[plane:plane + planes] = sampled["r2star_3t"] * r2_scale
        coarse = slice(plane // s, (plane + piece_shape[0]) // s)

        def block(values: np.ndarray) -> np.ndarray:
            n0, n1, n2 = (k // s for k in values.shape)
            return values.reshape(n0, s, n1, s, n2, s).mean(axis=(1, 3, 5), dtype=np.float32)

        if not recorded:
            chi_truth[coarse] = block(sampled["chi_local_ppm"])
        chi_air_mean[coarse] = block(sampled["chi_air_ppm"])
        m0_mean[coarse] = block(sampled["m0"])
        for echo, te in enumerate(box_echo_times):
            amplitude[echo, coarse] = block(sampled["m0"] * np.exp(-sampled["r2star_3t"] * r2_scale * np.float32(te)))
    del sampled

    total_ppm, local_ppm = supersampled_fields([fine_air, fine_local], voxel, b0_direction, supersample=s,
                                               pad_factor=pad_factor)
    fine_field_hz = None
    if recorded:
        # recorded data carry the susceptibility's band, no more: its truth is band-limited the same way
        chi_truth = band_limited_samples(fine_local, s)
        # chi relative to air already holds the brain's local susceptibility
        fine_field_hz = ppm_to_hz(forward_field(fine_air, [v / s for v in voxel], b0_direction,
                                                pad_factor=pad_factor), b0_tesla)
    del fine_air, fine_local
    total_correction, local_correction = outside_field_correction(
        model, box_shape, voxel, b0_direction, grid_to_mni, centre, pad_factor=pad_factor, lesions=lesions)
    total_hz = ppm_to_hz((total_ppm + total_correction)[crop], b0_tesla)
    local_hz = ppm_to_hz((local_ppm + local_correction)[crop], b0_tesla)
    del total_ppm, local_ppm, total_correction, local_correction

    axes = [((np.arange(n) - (n - 1) / 2.0) * v) for n, v in zip(shape, voxel)]
    labels = _labels_at_centres(model, axes, grid_to_mni, centre, lesions)
    brain_mask = (labels > 0) & (labels <= _BRAIN_LABEL_MAX)
    chi_relative = np.where(brain_mask, chi_truth[crop], 0.0).astype(np.float32)
    shim = np.zeros(shape, np.float32) if shim_order is None else shim_field(total_hz, brain_mask, axes, shim_order)
    total_hz += shim
    background_hz = total_hz - local_hz

    signal_phase = None
    if recorded:
        amplitude, signal_phase = _recorded_signal(fine_m0, fine_r2star, fine_field_hz, total_hz, echo_times, s,
                                                   crop)
        del fine_m0, fine_r2star, fine_field_hz
    else:
        amplitude = np.ascontiguousarray(amplitude[(slice(None), *crop)])
    if receive_bias:
        amplitude *= receive_bias_field(axes, float(receive_bias), np.random.default_rng([seed, 1]))
    if not recorded:
        for echo, te in enumerate(echo_times):
            amplitude[echo] *= dephasing_factor(total_hz, float(te))
    phi0_model = phase_offset_map(axes, rng, grid_to_mni)
    phi0 = phi0_model if phase_offset else np.zeros(shape, np.float32)
    beta = bipolar_error_map(axes, fov[0]) if bipolar else np.zeros(shape, np.float32)
    noisy = snr is not None and math.isfinite(float(snr))
    sigma = float(m0_mean[crop][brain_mask].mean()) / float(snr) if noisy else 0.0
    magnitude, phase = gre_signal(
        amplitude, total_hz, echo_times, phase_offset_rad=phi0 if phase_offset else None,
        bipolar_error_rad=beta if bipolar else None, noise_sigma=sigma, rng=rng, signal_phase_rad=signal_phase,
    )
    acquisition = MultiEchoGRE(
        magnitude=magnitude, phase=phase, echo_times_s=tuple(float(t) for t in echo_times),
        b0_tesla=float(b0_tesla), affine=affine, bipolar=bool(bipolar),
    )
    return HeadPhantom(
        acquisition=acquisition, chi_ppm=chi_relative, total_field_hz=total_hz.astype(np.float32),
        local_field_hz=local_hz.astype(np.float32), background_field_hz=background_hz.astype(np.float32),
        brain_mask=brain_mask, labels=labels, label_names=dict(REALISTIC_LABEL_NAMES), phase_offset_rad=phi0,
        bipolar_error_rad=beta, chi_air_ppm=chi_air_mean[crop].copy(), shim_field_hz=shim,
    )


def _recorded_signal(
    fine_m0: np.ndarray, fine_r2star: np.ndarray, fine_field_hz: np.ndarray, total_field_hz: np.ndarray,
    echo_times_s: np.ndarray, supersample: int, crop: tuple[slice, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Each echo's signal made on the fine grid and recorded in k-space: amplitude and phase on the output grid.

    ``fine_field_hz`` is the field of the fine box alone; what ``total_field_hz`` (the output grid's
    truth: block means, the head beyond the box, the shim) adds to its block means is smooth, and is
    added to the phase on the output grid. Returns the amplitude and the field's phase (radians), each
    of shape (echo, *output shape).
    """
    s = int(supersample)
    blocks = tuple(n // s for n in fine_field_hz.shape)
    fine_mean = fine_field_hz.reshape(blocks[0], s, blocks[1], s, blocks[2], s).mean(axis=(1, 3, 5))
    beyond_box_hz = total_field_hz - fine_mean[crop]
    amplitude = np.empty((len(echo_times_s), *total_field_hz.shape), np.float32)
    phase = np.empty_like(amplitude)
    for echo, te in enumerate(float(t) for t in echo_times_s):
        fine_signal = (fine_m0 * np.exp(-fine_r2star * np.float32(te))).astype(np.complex64)
        fine_signal *= np.exp(1j * np.float32(2.0 * np.pi * te) * fine_field_hz).astype(np.complex64)
        recorded = band_limited_samples(fine_signal, s)[crop]
        del fine_signal
        amplitude[echo] = np.abs(recorded)
        phase[echo] = np.angle(recorded) + np.float32(2.0 * np.pi * te) * beyond_box_hz
    return amplitude, phase


def _labels_at_centres(model: RealisticModel, axes: Sequence[np.ndarray], grid_to_mni: np.ndarray,
                       centre: np.ndarray, lesions: bool) -> np.ndarray:
    planes = [sample_on_grid(model, (axes[0][plane:plane + 16], axes[1], axes[2]), grid_to_mni, centre,
                             lesions=lesions)["label"] for plane in range(0, axes[0].size, 16)]
    return np.concatenate(planes, axis=0)
