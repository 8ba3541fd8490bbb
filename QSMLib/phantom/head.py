"""``simulate_head``: the whole phantom scan and its ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..acquisition import MultiEchoGRE, b0_direction_from_affine, check_echo_times, check_field_strength
from ..errors import QSMInputError
from ..units import ppm_to_hz
from .anatomy import BRAIN_LABELS, DEEP_GREY_MATTER, LABEL_NAMES, _lookup, susceptibility_tables
from .forward import isolation_correction, shim_field, supersampled_fields
from .rasterise import block_mean, grid_axes_mm, head_labels, head_margins
from .signal import bipolar_error_map, dephasing_factor, gre_signal, phase_offset_map


@dataclass
class HeadPhantom:
    """A simulated multi-echo GRE head scan and its ground truth.

    All volumes have array axes 0 = left -> right, 1 = posterior ->
    anterior, 2 = inferior -> superior, and shape (n0, n1, n2).

    Attributes
    ----------
    acquisition : MultiEchoGRE
        Magnitude (echo, n0, n1, n2) float32; phase wrapped to [-pi, pi)
        float32 radians; affine (array index -> RAS mm, including any
        obliquity); ``bipolar`` set when simulated bipolar.
    chi_ppm : numpy.ndarray of float32
        True susceptibility in ppm relative to CSF/water, averaged over each
        voxel from the fine grid (partial volumes), 0 outside ``brain_mask``.
    total_field_hz : numpy.ndarray of float32
        True total field, Hz: ``local_field_hz + background_field_hz``.
    local_field_hz : numpy.ndarray of float32
        Field of the brain's susceptibility relative to CSF/water (sources
        inside the brain only), Hz.
    background_field_hz : numpy.ndarray of float32
        Everything else, Hz: the field of the sources outside the brain (air,
        bone, soft tissue, sinus) and of the brain's uniform -9.4 ppm tissue
        baseline (harmonic inside the brain), plus ``shim_field_hz``.
    brain_mask : numpy.ndarray of bool
        Voxels whose centre lies in the brain (labels 1-12).
    labels : numpy.ndarray of int16
        Label map sampled at voxel centres, see :data:`LABEL_NAMES` (0 =
        air; labels 20-23 lie outside the brain mask).
    label_names : dict of int to str
        Label value -> name.
    phase_offset_rad : numpy.ndarray of float32
        The echo-independent phase offset ``phi0`` added (zeros if none).
    bipolar_error_rad : numpy.ndarray of float32
        The error added to even echoes (zeros if not bipolar).
    chi_air_ppm : numpy.ndarray of float32
        Susceptibility relative to air on the output grid (partial volumes),
        ppm: the whole source of the unshimmed total field.
    shim_field_hz : numpy.ndarray of float32
        Field added by the simulated shim, Hz (zeros without shim).
    """

    acquisition: MultiEchoGRE
    chi_ppm: np.ndarray
    total_field_hz: np.ndarray
    local_field_hz: np.ndarray
    background_field_hz: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    label_names: dict[int, str]
    phase_offset_rad: np.ndarray
    bipolar_error_rad: np.ndarray
    chi_air_ppm: Optional[np.ndarray] = None
    shim_field_hz: Optional[np.ndarray] = None


def deep_grey_matter_labels(phantom: Optional[HeadPhantom] = None) -> dict[int, str]:
    """Label value -> name of the deep grey matter structures (see :data:`DEEP_GREY_MATTER`)."""
    names = phantom.label_names if phantom is not None else LABEL_NAMES
    return {index: name for index, name in names.items() if name in DEEP_GREY_MATTER}


def acquisition_affine(shape: Sequence[int], voxel_size_mm: Sequence[float], oblique_deg: float = 0.0) -> np.ndarray:
    """Array index -> RAS mm affine with the volume centre at the origin.

    ``oblique_deg`` rotates the direction matrix about array axis 0 (a head
    tilt / oblique slab); the B0 direction seen from the array is then
    ``(0, sin a, cos a)``. The direction matrix (unit columns) is the
    ``rotation`` of :func:`head_labels` for a grid tilted this way.
    """
    a = math.radians(float(oblique_deg))
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    matrix = rotation @ np.diag([float(v) for v in voxel_size_mm])
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = -matrix @ ((np.asarray(shape, np.float64) - 1.0) / 2.0)
    return affine


def simulate_head(
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    fov_mm: Sequence[float] = (192.0, 224.0, 176.0),
    echo_times_s: Sequence[float] = (0.004, 0.008, 0.012, 0.016, 0.020),
    b0_tesla: float = 3.0,
    snr: Optional[float] = 100.0,
    oblique_deg: float = 0.0,
    acquisition_tilt_deg: float = 0.0,
    bipolar: bool = False,
    phase_offset: bool = True,
    supersample: int = 2,
    seed: int = 0,
    shim_order: Optional[int] = 2,
    intravoxel_dephasing: bool = True,
    pad_factor: float = 1.5,
) -> HeadPhantom:
    """Simulate a multi-echo GRE scan of the numerical head phantom.

    Parameters
    ----------
    voxel_size_mm : sequence of 3 float
        Output voxel size in mm per array axis (anisotropic allowed).
    fov_mm : sequence of 3 float
        Field of view in mm; shape = ``round(fov / voxel)`` per axis. The
        head spans about 148 x 192 x 162 mm, so a smaller FOV cuts it.
    echo_times_s : sequence of float
        Echo times in seconds.
    b0_tesla : float
        Field strength in tesla (fields in Hz and R2* scale with it).
    snr : float or None
        Mean brain signal at TE = 0 over the noise standard deviation (of
        the real and of the imaginary part). None or inf: no noise.
    oblique_deg : float
        Head tilt, degrees: B0 is tilted against the head about array axis
        0. The head stays the same in array coordinates (labels and chi are
        those of the axial phantom); the affine rotates and the field is
        simulated with ``b0_direction_from_affine(affine)``. This changes
        the physics (B0 is oblique to the anatomy), so the fields differ
        from the axial phantom's.
    acquisition_tilt_deg : float
        Oblique slices, degrees: the head stays where it is in the scanner
        (B0 along world z, the same physical fields as the axial phantom)
        and the voxel grid is rotated about the left-right axis, as a tilted
        slab. The affine carries the rotation (as for ``oblique_deg``), the
        anatomy is sampled at the rotated grid's points (so in the array the
        head appears rotated by ``-acquisition_tilt_deg``) and the field is
        simulated on that grid with ``b0_direction_from_affine(affine)``.
        Every returned volume lies on the tilted grid; world coordinates
        (``affine @ index``) of a point agree with the axial phantom's. The
        FOV rotates with the grid: parts of the head outside it (at 20
        degrees and the default FOV, a few mm of the chin) are left out, as
        the axial FOV leaves out what lies outside it. Mutually exclusive
        with a non-zero ``oblique_deg``.
    bipolar : bool
        Add a bipolar readout error (:func:`bipolar_error_map`) to even echoes.
    phase_offset : bool
        Add a smooth echo-independent phase offset (:func:`phase_offset_map`).
    supersample : int
        The field and partial volumes are computed on a grid this many
        times finer per axis and averaged down (1 = on the output grid,
        which a reconstruction with the same kernel would invert exactly).
    seed : int
        Seed of the phase offset and the noise.
    shim_order : int or None
        Highest degree (0, 1, 2) of the solid harmonics fitted to the total
        field over the brain and removed from it, as a scanner's shim would;
        the sinus field, too local for low orders, stays. None: no shim.
    intravoxel_dephasing : bool
        Attenuate the signal by the field gradient across each voxel
        (:func:`dephasing_factor`), which darkens voxels near the sinus.
    pad_factor : float
        Zero padding of the field simulation per axis (air around the FOV).

    Returns
    -------
    HeadPhantom
        The acquisition and the ground truth on the output grid.
    """
    voxel = _three_positive(voxel_size_mm, "voxel_size_mm")
    fov = _three_positive(fov_mm, "fov_mm")
    shape = tuple(int(round(f / v)) for f, v in zip(fov, voxel))
    if min(shape) < 2:
        raise QSMInputError(f"FOV {fov} mm with voxels {voxel} mm gives shape {shape}: need 2+ voxels per axis.")
    if int(supersample) != supersample or supersample < 1:
        raise QSMInputError(f"supersample must be a positive integer, got {supersample!r}.")
    s = int(supersample)
    echo_times = np.asarray(check_echo_times(echo_times_s), np.float64)
    check_field_strength(b0_tesla)
    if snr is not None and not snr > 0:
        raise QSMInputError(f"snr must be positive (or None for no noise), got {snr!r}.")
    if not math.isfinite(float(oblique_deg)):
        raise QSMInputError(f"oblique_deg must be a finite angle in degrees, got {oblique_deg!r}.")
    if not math.isfinite(float(acquisition_tilt_deg)):
        raise QSMInputError(f"acquisition_tilt_deg must be a finite angle in degrees, got {acquisition_tilt_deg!r}.")
    if float(oblique_deg) != 0.0 and float(acquisition_tilt_deg) != 0.0:
        raise QSMInputError(
            "Give either oblique_deg (head tilt: B0 oblique to the head) or acquisition_tilt_deg "
            f"(oblique slices: rotated grid), not both (got {oblique_deg!r} and {acquisition_tilt_deg!r})."
        )
    if shim_order is not None and shim_order not in (0, 1, 2):
        raise QSMInputError(f"shim_order must be 0, 1, 2 or None (no shim), got {shim_order!r}.")
    if not pad_factor >= 1.0:
        raise QSMInputError(f"pad_factor must be at least 1, got {pad_factor!r}.")

    tilted = float(acquisition_tilt_deg) != 0.0
    affine = acquisition_affine(shape, voxel, acquisition_tilt_deg if tilted else oblique_deg)
    b0_direction = b0_direction_from_affine(affine)
    # oblique slices: grid mm coordinates g lie at head-frame points rotation @ g
    rotation = affine[:3, :3] / np.asarray(voxel) if tilted else None
    rng = np.random.default_rng(seed)

    # Oblique slices: the head does not end where the tilted slab does, so the field is
    # simulated on a grid enlarged (symmetrically, same centre) to hold the whole head,
    # then cropped to the output grid. Zero margins otherwise.
    margin = head_margins(shape, voxel, rotation) if tilted else (0, 0, 0)
    sim_shape = tuple(n + 2 * m for n, m in zip(shape, margin))
    fine = head_labels(grid_axes_mm(sim_shape, voxel, s), dtype=np.uint8, rotation=rotation)
    absolute, brain_relative = susceptibility_tables()
    local_ppm, total_ppm = supersampled_fields(
        [brain_relative[fine], absolute[fine]], voxel, b0_direction, supersample=s, pad_factor=pad_factor
    )
    for field, correction in zip(
        (local_ppm, total_ppm),
        isolation_correction(
            sim_shape, voxel, b0_direction, (brain_relative, absolute), pad_factor=pad_factor, rotation=rotation
        ),
    ):
        field += correction
    crop = tuple(slice(m, m + n) for m, n in zip(margin, shape))
    local_hz = ppm_to_hz(local_ppm[crop], b0_tesla)
    total_hz = ppm_to_hz(total_ppm[crop], b0_tesla)
    del local_ppm, total_ppm
    if any(margin):
        fine = np.ascontiguousarray(fine[tuple(slice(s * m, s * (m + n)) for m, n in zip(margin, shape))])

    r2star = _lookup("r2star_3t") * np.float32(b0_tesla / 3.0)
    m0 = _lookup("m0")
    tables = [brain_relative, absolute, m0] + [m0 * np.exp(-r2star * np.float32(te)) for te in echo_times]
    averages = block_mean(fine, np.stack(tables), s)
    del fine
    chi_relative, chi_air, m0_map = averages[0].copy(), averages[1].copy(), averages[2]
    amplitude = averages[3:]

    axes = grid_axes_mm(shape, voxel)
    labels = head_labels(axes, dtype=np.int16, rotation=rotation)
    brain_mask = np.isin(labels, BRAIN_LABELS)
    chi_relative[~brain_mask] = 0.0

    if shim_order is None:
        shim = np.zeros(shape, np.float32)
    else:
        shim = shim_field(total_hz, brain_mask, axes, int(shim_order))
        total_hz += shim
    background_hz = total_hz - local_hz

    if intravoxel_dephasing:
        for echo, te in enumerate(echo_times):
            amplitude[echo] *= dephasing_factor(total_hz, float(te))
    # drawn even when unused, so the noise of a seed does not depend on phase_offset
    phi0_model = phase_offset_map(axes, rng, rotation)
    phi0 = phi0_model if phase_offset else np.zeros(shape, np.float32)
    beta = bipolar_error_map(axes, fov[0]) if bipolar else np.zeros(shape, np.float32)
    noisy = snr is not None and math.isfinite(float(snr))
    sigma = float(m0_map[brain_mask].mean()) / float(snr) if noisy else 0.0
    magnitude, phase = gre_signal(
        amplitude,
        total_hz,
        echo_times,
        phase_offset_rad=phi0 if phase_offset else None,
        bipolar_error_rad=beta if bipolar else None,
        noise_sigma=sigma,
        rng=rng,
    )
    del amplitude, averages
    acquisition = MultiEchoGRE(
        magnitude=magnitude,
        phase=phase,
        echo_times_s=tuple(float(t) for t in echo_times),
        b0_tesla=float(b0_tesla),
        affine=affine,
        bipolar=bool(bipolar),
    )
    return HeadPhantom(
        acquisition=acquisition,
        chi_ppm=chi_relative,
        total_field_hz=total_hz,
        local_field_hz=local_hz,
        background_field_hz=background_hz,
        brain_mask=brain_mask,
        labels=labels,
        label_names=dict(LABEL_NAMES),
        phase_offset_rad=phi0,
        bipolar_error_rad=beta,
        chi_air_ppm=chi_air,
        shim_field_hz=shim,
    )


def _three_positive(values: Sequence[float], name: str) -> tuple[float, float, float]:
    array = np.asarray(values, np.float64).reshape(-1)
    if array.shape != (3,) or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise QSMInputError(f"{name} must be three positive numbers in mm (array axes), got {values!r}.")
    return float(array[0]), float(array[1]), float(array[2])
