"""Rasterising the anatomy: label maps on (possibly rotated) grids and partial-volume averages."""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import QSMInputError
from .anatomy import ANATOMY, _Ellipsoid, _FoldedEllipsoid, _Shape, _Tube


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
    """Set ``labels`` to ``shape.label`` at the grid points inside ``shape``.

    ``rotation`` (see :func:`head_labels`) places grid point ``g`` at the
    head-frame point ``rotation @ g``; the offsets from the shape's centre
    are then broadcast only over the grid axes they depend on, so an
    aligned grid costs no more than separable arithmetic.
    """
    low, high = _world_bounds(shape)
    if rotation is not None:
        # the grid-frame box of the rotated world box's corners contains the shape
        corners = np.array(list(itertools.product(*zip(low, high)))) @ rotation  # rows: rotation.T @ corner
        low, high = corners.min(axis=0), corners.max(axis=0)
    box = tuple(_box(axis, lo, hi) for axis, lo, hi in zip(axes, low, high))
    if any(b.stop <= b.start for b in box):
        return
    centre = shape.start if isinstance(shape, _Tube) else shape.centre
    d = _offsets([axis[b] for axis, b in zip(axes, box)], centre, rotation)
    if isinstance(shape, _Tube):
        inside = _inside_tube(d[0], d[1], d[2], shape)
    elif isinstance(shape, _FoldedEllipsoid):
        folds = [np.sin(2 * np.pi * di / p + ph).astype(np.float32)
                 for di, p, ph in zip(d, shape.periods_mm, shape.phases_rad)]
        threshold = folds[0] * folds[1] * folds[2]
        threshold *= np.float32(shape.amplitude)
        threshold += 1.0
        inside = _radius2(d, shape.semi_axes) <= threshold
        inside &= _radius2(d, shape.limit_semi_axes) <= 1.0
    elif shape.angles_deg == (0.0, 0.0):
        inside = _radius2(d, shape.semi_axes) <= 1.0
    else:
        rot = _rotation(*shape.angles_deg).astype(np.float32)
        local = [d[0] * rot[0, j] + d[1] * rot[1, j] + d[2] * rot[2, j] for j in range(3)]
        inside = _radius2(local, shape.semi_axes) <= 1.0
    np.copyto(labels[box], labels.dtype.type(shape.label), where=inside)


def _offsets(
    grid_axes: Sequence[np.ndarray], centre: Sequence[float], rotation: Optional[np.ndarray]
) -> list[np.ndarray]:
    """Head-frame offsets from ``centre`` of the grid points, float32, each broadcastable to the 3D grid."""
    if rotation is None:
        return [(np.asarray(axis) - c).astype(np.float32).reshape([-1 if j == i else 1 for j in range(3)])
                for i, (axis, c) in enumerate(zip(grid_axes, centre))]
    g = [np.asarray(axis, np.float64) for axis in grid_axes]
    offsets = []
    for i in range(3):
        coordinate: Union[np.ndarray, float] = -float(centre[i])
        for j in range(3):
            if rotation[i, j] != 0.0:
                index = [None, None, None]
                index[j] = slice(None)
                coordinate = coordinate + (rotation[i, j] * g[j])[tuple(index)]
        offsets.append(np.asarray(coordinate, np.float32).reshape(
            np.shape(coordinate) + (1,) * (3 - np.ndim(coordinate))))
    return offsets


def _radius2(d: Sequence[np.ndarray], semi_axes: Sequence[float]) -> np.ndarray:
    # d broadcastable 3D arrays: sum of (d_j / a_j)^2
    total = (d[0] / np.float32(semi_axes[0])) ** 2
    total = total + (d[1] / np.float32(semi_axes[1])) ** 2
    return total + (d[2] / np.float32(semi_axes[2])) ** 2


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


def head_margins(
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
