"""Numerical head phantom and its forward simulation to multi-echo GRE.

The head is built from analytic shapes (ellipsoids and tubes) defined in mm,
so it looks the same at any voxel size. Its susceptibility is referenced to
the air outside the head (air = 0, so the zero padding of the FFT is
physical): soft tissue and CSF at -9.4 ppm, bone at -11.4 ppm, an air cavity
(sinus) at 0 and brain structures at -9.4 ppm plus their value relative to
CSF/water (Schenck, Med Phys 1996, "The role of magnetic susceptibility in
magnetic resonance imaging").

The field is simulated on a grid ``supersample`` times finer than the output
grid and averaged down, so the data are not made with the kernel that a
reconstruction uses on the output grid (no "inverse crime"). The field of the
periodic copies that FFT convolution adds is removed (:func:`isolation_correction`),
so it is the field of one head in air, and a second-order shim over the brain
is applied. The signal is ``M0 exp(-R2* TE)`` per tissue with partial volumes
and intravoxel dephasing, the phase ``phi0 + 2 pi f TE`` (plus a bipolar
error on even echoes), and complex Gaussian noise.

Array axes of every volume: axis 0 = left -> right, axis 1 = posterior ->
anterior, axis 2 = inferior -> superior (RAS index order in the axial case).

Labels (``LABEL_NAMES``; values relative to CSF/water in ppm, ``TISSUES``)::

    1 caudate           +0.06     12 calcification     -0.20
    2 putamen           +0.05     ---- outside the brain mask ----
    3 globus_pallidus   +0.19     20 extracerebral_csf  0.00
    4 thalamus          +0.01     21 bone              -2.00  (-11.4 vs air)
    5 substantia_nigra  +0.16     22 soft_tissue        0.00  (-9.4 vs air)
    6 red_nucleus       +0.12     23 air_cavity        +9.40  (0 vs air)
    7 dentate           +0.10
    8 csf (ventricles)   0.00
    9 white_matter      -0.03
   10 grey_matter       +0.02
   11 vein              +0.35

Brain values follow in vivo QSM at 3 T referenced to CSF: Deistung et al.,
NeuroImage 2013 (65:299); Lim et al., NeuroImage 2013 (82:449); Li et al.,
NeuroImage 2011 (55:1645); the QSM challenge 2.0 head phantom (Marques et al.,
MRM 2021). Veins: deoxygenated blood at about 60 % saturation (Haacke et al.,
AJNR 2009; Fan et al., MRM 2014). Calcification: Chen et al., Radiology 2014
(270:496). R2* at 3 T: Langkammer et al., Radiology 2010 (257:455) and Peran
et al., Brain 2007.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import scipy.fft

from . import _fft
from .acquisition import MultiEchoGRE, b0_direction_from_affine
from .errors import QSMInputError
from .inversion.kernel import dipole_kernel, unit_vector
from .units import ppm_to_hz

#: Susceptibility of water-like soft tissue (and CSF) relative to air, ppm.
TISSUE_VS_AIR_PPM = -9.4

#: Deep grey matter structures, as named in :data:`LABEL_NAMES`.
DEEP_GREY_MATTER = (
    "caudate",
    "putamen",
    "globus_pallidus",
    "thalamus",
    "substantia_nigra",
    "red_nucleus",
    "dentate",
)


@dataclass(frozen=True)
class Tissue:
    """MR and magnetic properties of one phantom tissue.

    Attributes
    ----------
    name : str
        Label name.
    chi_ppm : float
        Susceptibility relative to CSF/water in ppm (air is +9.4).
    m0 : float
        Signal at TE = 0 (proton density, arbitrary units; CSF = 1).
    r2star_3t : float
        R2* at 3 T in 1/s; scaled linearly with B0 for other field strengths.
    in_brain : bool
        Whether the tissue lies inside the brain mask.
    """

    name: str
    chi_ppm: float
    m0: float
    r2star_3t: float
    in_brain: bool


#: Tissues by label value. Label 0 is the air around the head.
TISSUES: dict[int, Tissue] = {
    0: Tissue("air", -TISSUE_VS_AIR_PPM, 0.0, 0.0, False),
    1: Tissue("caudate", 0.06, 0.82, 20.0, True),
    2: Tissue("putamen", 0.05, 0.80, 25.0, True),
    3: Tissue("globus_pallidus", 0.19, 0.74, 40.0, True),
    4: Tissue("thalamus", 0.01, 0.78, 20.0, True),
    5: Tissue("substantia_nigra", 0.16, 0.72, 38.0, True),
    6: Tissue("red_nucleus", 0.12, 0.74, 32.0, True),
    7: Tissue("dentate", 0.10, 0.74, 30.0, True),
    8: Tissue("csf", 0.0, 1.0, 4.0, True),
    9: Tissue("white_matter", -0.03, 0.70, 21.0, True),
    10: Tissue("grey_matter", 0.02, 0.86, 17.0, True),
    11: Tissue("vein", 0.35, 0.80, 45.0, True),
    12: Tissue("calcification", -0.20, 0.35, 120.0, True),
    20: Tissue("extracerebral_csf", 0.0, 1.0, 4.0, False),
    21: Tissue("bone", -2.0, 0.03, 500.0, False),
    22: Tissue("soft_tissue", 0.0, 0.75, 35.0, False),
    23: Tissue("air_cavity", -TISSUE_VS_AIR_PPM, 0.0, 0.0, False),
}

#: Label value -> name, for every label the phantom paints (0 = background air).
LABEL_NAMES: dict[int, str] = {index: tissue.name for index, tissue in TISSUES.items() if index}

#: Labels whose voxels form the brain mask.
BRAIN_LABELS = tuple(index for index, tissue in TISSUES.items() if tissue.in_brain)

_LUT_SIZE = max(TISSUES) + 1
_LABEL = {tissue.name: index for index, tissue in TISSUES.items()}


@dataclass(frozen=True)
class _Ellipsoid:
    label: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    # rotation about axis 2 then axis 0, degrees
    angles_deg: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class _Tube:
    """A capsule: all points within ``radius`` of the segment ``start``-``end``."""

    label: int
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class _FoldedEllipsoid:
    """An ellipsoid whose surface is folded like gyri, kept inside ``limit_semi_axes``.

    Inside where ``q <= 1 + amplitude * sin(x) sin(y) sin(z)`` (``q`` the
    normalised squared radius, the sines of the given periods and phases).
    """

    label: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    amplitude: float
    periods_mm: tuple[float, float, float]
    phases_rad: tuple[float, float, float]
    limit_semi_axes: tuple[float, float, float]


_Shape = Union[_Ellipsoid, _Tube, _FoldedEllipsoid]

# Head frame in mm: x (axis 0) to the right, y (axis 1) anterior, z (axis 2)
# superior, origin at the centre of the default 192 x 224 x 176 mm FOV.
_HEAD_CENTRE = (0.0, -4.0, -2.0)
_BRAIN_SEMI_AXES = (60.0, 82.0, 66.0)


def _bilateral(
    label: int,
    centre: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
) -> tuple[_Ellipsoid, _Ellipsoid]:
    x, y, z = centre
    return (
        _Ellipsoid(label, (x, y, z), semi_axes, (yaw_deg, pitch_deg)),
        _Ellipsoid(label, (-x, y, z), semi_axes, (-yaw_deg, pitch_deg)),
    )


def _cortical_vein(
    label: int, start_dir: tuple[float, float, float], end_dir: tuple[float, float, float], depth: float, radius: float
) -> _Tube:
    # Endpoints on a scaled copy of the pial ellipsoid so the vein runs in the cortex.
    def on_surface(direction: tuple[float, float, float]) -> tuple[float, float, float]:
        d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
        a = np.asarray(_BRAIN_SEMI_AXES)
        t = depth / math.sqrt(float(np.sum((d / a) ** 2)))
        x, y, z = (float(v) for v in np.asarray(_HEAD_CENTRE) + t * d)
        return x, y, z

    return _Tube(label, on_surface(start_dir), on_surface(end_dir), radius)


def _anatomy() -> tuple[_Shape, ...]:
    """The shapes in painting order: a later shape overwrites an earlier one."""
    c = _HEAD_CENTRE
    L = _LABEL
    shapes: list[_Shape] = [
        _Ellipsoid(L["soft_tissue"], c, (74.0, 96.0, 80.0)),
        # face: extends the head forward and down so the sinus sits in bone below the frontal lobe
        _Ellipsoid(L["soft_tissue"], (0.0, 50.0, -55.0), (46.0, 42.0, 29.0)),
        _Ellipsoid(L["bone"], c, (69.0, 91.0, 75.0)),
        _Ellipsoid(L["bone"], (0.0, 46.0, -58.0), (38.0, 34.0, 22.0)),
        _Ellipsoid(L["extracerebral_csf"], c, (63.0, 85.0, 69.0)),
        _Ellipsoid(L["grey_matter"], c, _BRAIN_SEMI_AXES),
        # folded grey/white boundary: cortex 1.5-11 mm thick, so the local field has cortical texture
        _FoldedEllipsoid(
            L["white_matter"],
            c,
            (51.0, 71.0, 56.0),
            0.3,
            (19.0, 23.0, 21.0),
            (0.3, 1.1, 2.0),
            (57.0, 78.0, 63.0),
        ),
        *_bilateral(L["caudate"], (16.0, 10.0, 12.0), (4.5, 11.0, 8.0)),
        *_bilateral(L["putamen"], (26.0, 2.0, 2.0), (5.0, 14.0, 9.0)),
        *_bilateral(L["globus_pallidus"], (19.5, -2.0, 0.0), (3.5, 8.0, 5.0)),
        *_bilateral(L["thalamus"], (10.5, -18.0, 4.0), (7.0, 13.0, 8.0)),
        *_bilateral(L["red_nucleus"], (5.0, -20.0, -8.0), (3.5, 4.0, 4.5)),
        # the substantia nigra runs anterolaterally and slightly downwards
        *_bilateral(L["substantia_nigra"], (10.0, -16.0, -14.0), (3.0, 9.0, 2.5), -25.0, -10.0),
        *_bilateral(L["dentate"], (14.0, -56.0, -34.0), (6.0, 8.0, 6.0), 20.0),
        *_bilateral(L["csf"], (8.0, -2.0, 14.0), (4.5, 26.0, 9.0), 0.0, 8.0),
        _Ellipsoid(L["csf"], (0.0, -12.0, 2.0), (1.5, 10.0, 8.0)),
        # veins at different angles to B0: straight sinus, internal cerebral veins, cortical veins
        _Tube(L["vein"], (0.0, -42.0, 20.0), (0.0, -70.0, -6.0), 2.5),
        _Tube(L["vein"], (2.5, 2.0, 11.0), (2.5, -32.0, 17.0), 1.3),
        _Tube(L["vein"], (-2.5, 2.0, 11.0), (-2.5, -32.0, 17.0), 1.3),
        _cortical_vein(L["vein"], (0.55, 0.35, 0.75), (0.65, -0.3, 0.7), 0.965, 1.5),
        _cortical_vein(L["vein"], (-0.9, 0.2, 0.25), (-0.85, -0.45, 0.3), 0.965, 1.3),
        _Ellipsoid(L["calcification"], (-24.0, 22.0, 24.0), (3.0, 3.0, 3.0)),
        # sphenoid/ethmoid-like sinus below the frontal lobe, walled by the facial bone
        _Ellipsoid(L["air_cavity"], (0.0, 40.0, -72.0), (16.0, 14.0, 8.0)),
    ]
    return tuple(shapes)


ANATOMY = _anatomy()


def grid_axes_mm(
    shape: Sequence[int], voxel_size_mm: Sequence[float], supersample: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample positions in mm along each array axis, origin at the volume centre.

    Parameters
    ----------
    shape : sequence of 3 int
        Output (coarse) grid shape.
    voxel_size_mm : sequence of 3 float
        Output voxel size in mm per array axis.
    supersample : int
        Sub-samples per voxel and axis. Fine sample ``f`` lies in coarse voxel
        ``f // supersample``, at the centre of its sub-voxel.

    Returns
    -------
    tuple of 3 numpy.ndarray of float64
        Ascending positions, ``supersample * shape[j]`` entries on axis ``j``.
    """
    s = int(supersample)
    axes = []
    for n, v in zip(shape, voxel_size_mm):
        fine = np.arange(s * int(n), dtype=np.float64)
        axes.append(((fine + 0.5) / s - 0.5 - (int(n) - 1) / 2.0) * float(v))
    return axes[0], axes[1], axes[2]


def _box(axis: np.ndarray, low: float, high: float) -> slice:
    return slice(int(np.searchsorted(axis, low, "left")), int(np.searchsorted(axis, high, "right")))


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    # columns are the shape's own axes in the head frame
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    about_z = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    return about_z @ about_x


def _world_bounds(shape: _Shape) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (head frame, mm) that contains ``shape``."""
    if isinstance(shape, _Tube):
        ends = np.array([shape.start, shape.end])
        return ends.min(axis=0) - shape.radius, ends.max(axis=0) + shape.radius
    if isinstance(shape, _FoldedEllipsoid):
        reach = np.asarray(shape.limit_semi_axes)
    elif shape.angles_deg == (0.0, 0.0):
        reach = np.asarray(shape.semi_axes)
    else:
        reach = np.full(3, max(shape.semi_axes))
    return np.asarray(shape.centre) - reach, np.asarray(shape.centre) + reach


def _paint(
    labels: np.ndarray, axes: Sequence[np.ndarray], shape: _Shape, rotation: Optional[np.ndarray] = None
) -> None:
    if rotation is not None:
        _paint_rotated(labels, axes, shape, rotation)
        return
    low, high = _world_bounds(shape)
    box = tuple(_box(axis, lo, hi) for axis, lo, hi in zip(axes, low, high))
    if any(b.stop <= b.start for b in box):
        return
    centre = shape.start if isinstance(shape, _Tube) else shape.centre
    d = [(axis[b] - c).astype(np.float32) for axis, b, c in zip(axes, box, centre)]
    if isinstance(shape, _Tube):
        inside = _inside_tube(d[0][:, None, None], d[1][None, :, None], d[2][None, None, :], shape)
    elif isinstance(shape, _FoldedEllipsoid):
        folds = [
            np.sin(2 * np.pi * di / p + ph).astype(np.float32)
            for di, p, ph in zip(d, shape.periods_mm, shape.phases_rad)
        ]
        threshold = (folds[0][:, None] * folds[1][None, :])[:, :, None] * folds[2][None, None, :]
        threshold *= np.float32(shape.amplitude)
        threshold += 1.0
        inside = _normalised_radius2(d, shape.semi_axes) <= threshold
        inside &= _normalised_radius2(d, shape.limit_semi_axes) <= 1.0
    elif shape.angles_deg == (0.0, 0.0):
        inside = _normalised_radius2(d, shape.semi_axes) <= 1.0
    else:
        rot = _rotation(*shape.angles_deg).astype(np.float32)
        dx, dy, dz = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
        q = np.zeros(tuple(b.stop - b.start for b in box), np.float32)
        for j in range(3):
            local = dx * rot[0, j] + dy * rot[1, j] + dz * rot[2, j]
            q += (local / np.float32(shape.semi_axes[j])) ** 2
        inside = q <= 1.0
    np.copyto(labels[box], labels.dtype.type(shape.label), where=inside)


def _paint_rotated(labels: np.ndarray, axes: Sequence[np.ndarray], shape: _Shape, rotation: np.ndarray) -> None:
    """Paint ``shape`` on a grid whose mm coordinates ``g`` sit at head-frame points ``rotation @ g``."""
    rotation = np.asarray(rotation, np.float64)
    low, high = _world_bounds(shape)
    # the grid-frame box of the rotated world box's corners contains the shape
    corners = np.array(list(itertools.product(*zip(low, high)))) @ rotation  # rows: rotation.T @ corner
    box = tuple(_box(axis, lo, hi) for axis, lo, hi in zip(axes, corners.min(axis=0), corners.max(axis=0)))
    if any(b.stop <= b.start for b in box):
        return
    centre = shape.start if isinstance(shape, _Tube) else shape.centre
    g = [np.asarray(axis[b], np.float64) for axis, b in zip(axes, box)]
    # head-frame offsets from the shape's centre, each broadcast only over the grid axes it depends on
    d: list[np.ndarray] = []
    for i in range(3):
        coordinate: Union[np.ndarray, float] = -float(centre[i])
        for j in range(3):
            if rotation[i, j] != 0.0:
                index = [None, None, None]
                index[j] = slice(None)
                coordinate = coordinate + (rotation[i, j] * g[j])[tuple(index)]
        d.append(np.asarray(coordinate, np.float32).reshape(np.shape(coordinate) + (1,) * (3 - np.ndim(coordinate))))
    if isinstance(shape, _Tube):
        inside = _inside_tube(d[0], d[1], d[2], shape)
    elif isinstance(shape, _FoldedEllipsoid):
        threshold = np.float32(1.0)
        folds = np.float32(shape.amplitude)
        for di, p, ph in zip(d, shape.periods_mm, shape.phases_rad):
            folds = folds * np.sin(di * np.float32(2 * np.pi / p) + np.float32(ph))
        threshold = threshold + folds
        inside = _radius2(d, shape.semi_axes) <= threshold
        inside &= _radius2(d, shape.limit_semi_axes) <= 1.0
    elif shape.angles_deg == (0.0, 0.0):
        inside = _radius2(d, shape.semi_axes) <= 1.0
    else:
        rot = _rotation(*shape.angles_deg).astype(np.float32)
        local = [d[0] * rot[0, j] + d[1] * rot[1, j] + d[2] * rot[2, j] for j in range(3)]
        inside = _radius2(local, shape.semi_axes) <= 1.0
    np.copyto(labels[box], labels.dtype.type(shape.label), where=inside)


def _radius2(d: Sequence[np.ndarray], semi_axes: Sequence[float]) -> np.ndarray:
    # d broadcastable 3D arrays: sum of (d_j / a_j)^2
    total = (d[0] / np.float32(semi_axes[0])) ** 2
    total = total + (d[1] / np.float32(semi_axes[1])) ** 2
    return total + (d[2] / np.float32(semi_axes[2])) ** 2


def _normalised_radius2(d: Sequence[np.ndarray], semi_axes: Sequence[float]) -> np.ndarray:
    # separable, so the 3D array is written once
    in_plane = (d[0] / semi_axes[0])[:, None] ** 2 + (d[1] / semi_axes[1])[None, :] ** 2
    return in_plane[:, :, None] + ((d[2] / semi_axes[2]) ** 2)[None, None, :]


def _inside_tube(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, shape: _Tube) -> np.ndarray:
    # dx, dy, dz: head-frame offsets from shape.start, broadcastable to the box
    direction = (np.asarray(shape.end) - np.asarray(shape.start)).astype(np.float32)
    along = (dx * direction[0] + dy * direction[1] + dz * direction[2]) / np.float32(direction @ direction)
    np.clip(along, 0.0, 1.0, out=along)
    dist2 = (dx - along * direction[0]) ** 2 + (dy - along * direction[1]) ** 2
    dist2 += (dz - along * direction[2]) ** 2
    return dist2 <= np.float32(shape.radius**2)


def head_labels(
    axes_mm: Sequence[np.ndarray], dtype: type = np.int16, *, rotation: Optional[np.ndarray] = None
) -> np.ndarray:
    """Paint the phantom's label map on a rectilinear grid.

    Parameters
    ----------
    axes_mm : sequence of 3 numpy.ndarray
        Ascending sample positions in mm along array axes 0, 1, 2 (head
        frame: right, anterior, superior; origin at the FOV centre), e.g.
        from :func:`grid_axes_mm`.
    dtype : numpy integer type
        Output type (``np.uint8`` saves memory on fine grids).
    rotation : numpy.ndarray, shape (3, 3), optional
        Orientation of the grid in the head frame: the sample at grid
        coordinates ``g = (axes_mm[0][i], axes_mm[1][j], axes_mm[2][k])``
        lies at the head-frame point ``rotation @ g`` (an oblique grid, e.g.
        the unit-column direction matrix of :func:`acquisition_affine`). The
        head then appears rotated by ``rotation.T`` in the array. None: the
        grid is aligned with the head frame.

    Returns
    -------
    numpy.ndarray, shape (len(axes_mm[0]), len(axes_mm[1]), len(axes_mm[2]))
        Label of the tissue at each sample point (see :data:`LABEL_NAMES`;
        0 = air around the head).
    """
    if rotation is not None:
        rotation = np.asarray(rotation, np.float64)
        if rotation.shape != (3, 3) or not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6):
            raise QSMInputError(f"rotation must be a 3x3 rotation matrix, got {rotation.tolist()!r}.")
        if np.allclose(rotation, np.eye(3), rtol=0.0, atol=1e-12):
            rotation = None
    labels = np.zeros(tuple(len(axis) for axis in axes_mm), dtype=dtype)
    for shape in ANATOMY:
        _paint(labels, axes_mm, shape, rotation)
    return labels


def _lookup(property_name: str) -> np.ndarray:
    table = np.zeros(_LUT_SIZE, np.float32)
    for index, tissue in TISSUES.items():
        table[index] = getattr(tissue, property_name)
    return table


def susceptibility_tables() -> tuple[np.ndarray, np.ndarray]:
    """Label -> susceptibility look-up tables, ppm.

    Returns
    -------
    absolute : numpy.ndarray of float32
        Susceptibility relative to air (air outside the head = 0): the
        source of the total field.
    brain_relative : numpy.ndarray of float32
        Inside the brain: susceptibility relative to CSF/water (the QSM
        truth, the source of the local field); 0 for every non-brain label.
    """
    relative = _lookup("chi_ppm")
    absolute = relative + np.float32(TISSUE_VS_AIR_PPM)
    absolute[0] = 0.0
    absolute[_LABEL["air_cavity"]] = 0.0
    in_brain = np.zeros(_LUT_SIZE, bool)
    in_brain[list(BRAIN_LABELS)] = True
    return absolute, np.where(in_brain, relative, np.float32(0.0)).astype(np.float32)


def block_mean(fine: np.ndarray, tables: np.ndarray, supersample: int) -> np.ndarray:
    """Average look-up values of a fine label map over each coarse voxel.

    Parameters
    ----------
    fine : numpy.ndarray of int, shape (s n0, s n1, s n2)
        Fine label map, ``s = supersample``.
    tables : numpy.ndarray, shape (q, n_labels)
        ``q`` look-up tables indexed by label.
    supersample : int
        Sub-samples per coarse voxel and axis.

    Returns
    -------
    numpy.ndarray of float32, shape (q, n0, n1, n2)
        Partial-volume averages of each table.
    """
    s = int(supersample)
    tables = np.asarray(tables, dtype=np.float32)
    offsets = list(itertools.product(range(s), repeat=3))
    first = np.ascontiguousarray(fine[::s, ::s, ::s])
    # most voxels hold one tissue: average only where the sub-samples differ
    mixed = np.zeros(first.shape, bool)
    for o0, o1, o2 in offsets[1:]:
        mixed |= fine[o0::s, o1::s, o2::s] != first
    result = np.empty((tables.shape[0], *first.shape), np.float32)
    for q, table in enumerate(tables):
        np.take(table, first, out=result[q])
    sub_labels = np.stack([fine[o0::s, o1::s, o2::s][mixed] for o0, o1, o2 in offsets])
    averages = tables[:, sub_labels].mean(axis=1, dtype=np.float64).astype(np.float32)
    result[:, mixed] = averages
    return result


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
        k = 0 term is 0 as in :func:`QSMLib.inversion.kernel.dipole_kernel`.
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
        spectrum = scipy.fft.fftn(spectrum, workers=_fft.WORKERS, overwrite_x=True)
        folded = np.zeros(padded_coarse, np.complex64)
        for alias in itertools.product(range(s), repeat=3):
            block = tuple(slice(a * n, (a + 1) * n) for a, n in zip(alias, padded_coarse))
            nyquist = [
                n // 2 - sl.start if n % 2 == 0 and sl.start <= n // 2 < sl.stop else None
                for n, sl in zip(padded_fine, block)
            ]
            k0, k1, k2 = (k[sl] for k, sl in zip(k_fine, block))
            kernel = _dipole(k0, k1, k2, b, origin=alias == (0, 0, 0), nyquist=nyquist)
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
        field = scipy.fft.ifftn(folded, workers=_fft.WORKERS, overwrite_x=True)[tuple(slice(0, n) for n in coarse)]
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


def _dirichlet(n: int, s: int) -> np.ndarray:
    """``sin(pi k s / n) / (s sin(pi k / n))`` for k = 0..n-1 (1 at k = 0), float32."""
    k = np.arange(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.sin(np.pi * k * s / n) / (s * np.sin(np.pi * k / n))
    ratio[0] = 1.0
    return ratio.astype(np.float32)


def _dipole(
    k0: np.ndarray,
    k1: np.ndarray,
    k2: np.ndarray,
    b: np.ndarray,
    *,
    origin: bool,
    nyquist: Sequence[Optional[int]] = (None, None, None),
) -> np.ndarray:
    """``D = 1/3 - (k.b)^2/|k|^2`` on the grid k0 x k1 x k2, as in ``dipole_kernel``, block-wise.

    ``nyquist[j]`` is the index of the Nyquist frequency in ``kj`` (even
    lengths), if it falls in this block. There ``+k`` and ``-k`` are the
    same sample, and an oblique ``b`` would make ``D`` differ between them;
    averaging the two (dropping the cross terms of that component) keeps
    ``D`` Hermitian, so the real and imaginary sources packed into one
    complex FFT do not leak into each other.
    """
    regular, edge = [], []
    for k, index in zip((k0, k1, k2), nyquist):
        r, q = k.copy(), np.zeros_like(k)
        if index is not None:
            q[index], r[index] = k[index], 0.0
        regular.append(r)
        edge.append(q)
    k_dot_b = (regular[0] * b[0])[:, None] + (regular[1] * b[1])[None, :]
    k_dot_b = k_dot_b[:, :, None] + (regular[2] * b[2])[None, None, :]
    np.multiply(k_dot_b, k_dot_b, out=k_dot_b)
    if any(index is not None for index in nyquist):
        e0, e1, e2 = ((q * bj) ** 2 for q, bj in zip(edge, b))
        k_dot_b += (e0[:, None] + e1[None, :])[:, :, None] + e2[None, None, :]
    k_squared = (k0 * k0)[:, None] + (k1 * k1)[None, :]
    k_squared = k_squared[:, :, None] + (k2 * k2)[None, None, :]
    if origin:
        k_squared[0, 0, 0] = 1.0
    np.divide(k_dot_b, k_squared, out=k_dot_b)
    np.subtract(np.float32(1.0 / 3.0), k_dot_b, out=k_dot_b)
    if origin:
        k_dot_b[0, 0, 0] = 0.0
    return k_dot_b


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


def phase_offset_map(
    axes_mm: Sequence[np.ndarray], rng: np.random.Generator, rotation: Optional[np.ndarray] = None
) -> np.ndarray:
    """A smooth echo-independent phase offset ``phi0`` (radians), like a coil's.

    A constant, a linear ramp and three broad Gaussian bumps centred around
    the head, with parameters drawn from ``rng``: a range of a few radians.
    They are defined in the head frame; ``rotation`` (see :func:`head_labels`)
    gives the orientation of an oblique grid, so the same draws give the same
    map in space whatever the grid.

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    constant = rng.uniform(-np.pi, np.pi)
    ramp = rng.uniform(-1.0, 1.0, size=3) / 100.0  # rad/mm
    to_grid = None if rotation is None else np.asarray(rotation, np.float64).T
    if to_grid is not None:
        ramp = to_grid @ ramp  # ramp . (R g) = (R^T ramp) . g
    x, y, z = (np.asarray(a, np.float64) for a in axes_mm)
    phi0 = (constant + ramp[0] * x)[:, None, None] + (ramp[1] * y)[None, :, None] + (ramp[2] * z)[None, None, :]
    phi0 = phi0.astype(np.float32)
    for _ in range(3):
        amplitude = rng.uniform(-2.0, 2.0)
        width = rng.uniform(40.0, 70.0)
        direction = rng.normal(size=3)
        centre = 110.0 * direction / np.linalg.norm(direction)
        if to_grid is not None:
            centre = to_grid @ centre  # |R g - c| = |g - R^T c|
        gauss = [np.exp(-((a - c) ** 2) / (2 * width**2)).astype(np.float32) for a, c in zip((x, y, z), centre)]
        phi0 += np.float32(amplitude) * (gauss[0][:, None, None] * gauss[1][None, :, None] * gauss[2][None, None, :])
    return phi0


def bipolar_error_map(
    axes_mm: Sequence[np.ndarray], fov_mm: float, offset_rad: float = 0.3, gradient_rad: float = 1.0
) -> np.ndarray:
    """Phase error of even echoes of a bipolar readout (readout along axis 0), radians.

    ``offset_rad`` plus a linear ramp of ``gradient_rad`` across the FOV along
    axis 0 (zero at the FOV centre), the dominant terms in Li et al. (MRM
    2015) and Eckstein et al. (MRM 2018).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    x = np.asarray(axes_mm[0], np.float64)
    ramp = (offset_rad + gradient_rad * x / float(fov_mm)).astype(np.float32)
    shape = (len(axes_mm[0]), len(axes_mm[1]), len(axes_mm[2]))
    return np.ascontiguousarray(np.broadcast_to(ramp[:, None, None], shape))


def dephasing_factor(total_field_hz: np.ndarray, echo_time_s: float) -> np.ndarray:
    """Intravoxel dephasing by the field gradient across each voxel.

    A linear field change of ``g`` Hz across a voxel averages the voxel's
    signal by ``sinc(g TE)`` per axis (negative past the first zero, i.e.
    a phase flip).

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
        Signed amplitude factor.
    """
    factor = np.ones(total_field_hz.shape, np.float32)
    for axis in range(3):
        step_hz = np.gradient(total_field_hz, axis=axis)
        factor *= np.sinc(step_hz * np.float32(echo_time_s)).astype(np.float32)
    return factor


def gre_signal(
    amplitude: np.ndarray,
    total_field_hz: np.ndarray,
    echo_times_s: Sequence[float],
    *,
    phase_offset_rad: Optional[np.ndarray] = None,
    bipolar_error_rad: Optional[np.ndarray] = None,
    noise_sigma: float = 0.0,
    rng: Optional[np.random.Generator] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-echo GRE magnitude and wrapped phase from amplitude and field.

    ``S_n = A_n exp(i (phi0 + 2 pi f TE_n + beta_n)) + noise``, with the
    bipolar error ``beta`` on even echoes (2nd, 4th, ...) only.

    Parameters
    ----------
    amplitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Signed noise-free amplitude per echo (decay and dephasing included).
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Field offset in Hz.
    echo_times_s : sequence of float
        Echo times in seconds.
    phase_offset_rad, bipolar_error_rad : numpy.ndarray, shape (n0, n1, n2), optional
        Echo-independent offset ``phi0`` and the even-echo error ``beta``.
    noise_sigma : float
        Standard deviation of the real and of the imaginary noise (0: none).
    rng : numpy.random.Generator, optional
        Noise source (required when ``noise_sigma > 0``).

    Returns
    -------
    magnitude : numpy.ndarray of float32, shape (echo, n0, n1, n2)
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Radians in [-pi, pi). Where the signal is exactly 0 (no noise) the
        phase is the model phase, so it stays defined outside the head.
    """
    n_echoes = len(echo_times_s)
    magnitude = np.empty((n_echoes, *total_field_hz.shape), np.float32)
    phase = np.empty_like(magnitude)
    two_pi = np.float32(2.0 * np.pi)
    for echo, te in enumerate(echo_times_s):
        phi = total_field_hz * (two_pi * np.float32(te))
        if phase_offset_rad is not None:
            phi += phase_offset_rad
        if bipolar_error_rad is not None and echo % 2 == 1:
            phi += bipolar_error_rad
        signal = np.empty(phi.shape, np.complex64)
        signal.real = amplitude[echo] * np.cos(phi)
        signal.imag = amplitude[echo] * np.sin(phi)
        if noise_sigma > 0:
            if rng is None:
                raise QSMInputError("gre_signal needs an rng (numpy.random.Generator) when noise_sigma > 0.")
            signal.real += np.float32(noise_sigma) * rng.standard_normal(phi.shape, dtype=np.float32)
            signal.imag += np.float32(noise_sigma) * rng.standard_normal(phi.shape, dtype=np.float32)
        magnitude[echo] = np.abs(signal)
        angle = np.angle(signal)
        if noise_sigma <= 0:
            empty = amplitude[echo] == 0
            angle[empty] = np.angle(np.exp(1j * phi[empty]))
        phase[echo] = angle
    # angle() returns [-pi, pi] rounded to float32, whose pi lies outside the exact interval;
    # both ends map to the float32 nearest -pi from inside, so the phase is in [-pi, pi)
    lowest = np.nextafter(-np.float32(np.pi), np.float32(0.0))
    phase[(phase >= np.float32(np.pi)) | (phase < lowest)] = lowest
    return magnitude, phase


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
    echo_times = np.asarray(echo_times_s, np.float64).reshape(-1)
    if echo_times.size == 0 or np.any(echo_times <= 0) or np.any(np.diff(echo_times) <= 0):
        raise QSMInputError(f"Echo times must be positive, increasing seconds, got {echo_times.tolist()}.")
    if snr is not None and not snr > 0:
        raise QSMInputError(f"snr must be positive (or None for no noise), got {snr!r}.")
    if echo_times.max() > 1.0:
        raise QSMInputError(f"Echo times {echo_times.tolist()} look like milliseconds: give them in seconds.")
    if not 0.05 <= float(b0_tesla) <= 20.0:
        raise QSMInputError(f"Field strength {b0_tesla!r} T is not plausible: give B0 in tesla (e.g. 3).")
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
    margin = _head_margins(shape, voxel, rotation) if tilted else (0, 0, 0)
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


def _head_margins(
    shape: Sequence[int], voxel_size_mm: Sequence[float], rotation: Optional[np.ndarray]
) -> tuple[int, int, int]:
    """Voxels to add on each side of each axis so that a grid of orientation ``rotation`` holds the whole head."""
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for shape_ in ANATOMY:
        if isinstance(shape_, _Ellipsoid) and shape_.angles_deg == (0.0, 0.0) or isinstance(shape_, _FoldedEllipsoid):
            # exact extent of an axis-aligned ellipsoid along each grid axis u = rotation[:, j]
            semi = np.asarray(shape_.limit_semi_axes if isinstance(shape_, _FoldedEllipsoid) else shape_.semi_axes)
            centre = np.asarray(shape_.centre) @ rotation
            reach = np.sqrt(((semi[:, None] * rotation) ** 2).sum(axis=0))
            lo, hi = centre - reach, centre + reach
        else:
            box_low, box_high = _world_bounds(shape_)
            corners = np.array(list(itertools.product(*zip(box_low, box_high)))) @ rotation
            lo, hi = corners.min(axis=0), corners.max(axis=0)
        low, high = np.minimum(low, lo), np.maximum(high, hi)
    margins = []
    for n, v, lo, hi in zip(shape, voxel_size_mm, low, high):
        beyond = max(-lo, hi) / float(v) - int(n) / 2.0  # voxels missing on the worse side
        margins.append(int(math.ceil(beyond)) + 1 if beyond > 0 else 0)
    return margins[0], margins[1], margins[2]


def _three_positive(values: Sequence[float], name: str) -> tuple[float, float, float]:
    array = np.asarray(values, np.float64).reshape(-1)
    if array.shape != (3,) or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise QSMInputError(f"{name} must be three positive numbers in mm (array axes), got {values!r}.")
    return float(array[0]), float(array[1]), float(array[2])
