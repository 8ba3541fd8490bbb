"""Spherical mean value (SMV) operators shared by the SMV-based background removal methods."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _fft
from .._operators import ball_interior, sphere_kernel


def smv_frame(
    mask: np.ndarray, voxel_size_mm: Sequence[float], radius_mm: float
) -> tuple[tuple[slice, ...], tuple[int, ...], np.ndarray, np.ndarray]:
    """Where SMV operators act: the mask's bounding box, its FFT shape, the ball's spectrum, the eroded mask.

    :func:`smv_balls` with one radius.
    """
    box, shape, [(ball, eroded)] = smv_balls(mask, voxel_size_mm, [radius_mm])
    return box, shape, ball, eroded


def smv_balls(
    mask: np.ndarray, voxel_size_mm: Sequence[float], radii_mm: Sequence[float]
) -> tuple[tuple[slice, ...], tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]]:
    """The frame of SMV operators with balls of several radii, and each ball's spectrum and eroded mask.

    Balls centred on an eroded mask stay inside the mask; the box is padded
    with zeros as wide as the largest radius so that, also where the mask
    reaches the edge of the field of view, no ball wraps round onto the
    other side.

    Returns
    -------
    box : tuple of slice
        The mask's bounding box (plus one voxel).
    shape : tuple of int
        Fast FFT shape that holds the box.
    balls : list of (numpy.ndarray of float32, numpy.ndarray of bool)
        Per radius, in the order given: the rfft of the normalised ball on
        ``shape``, and the voxels whose whole ball lies in the mask (in
        frame coordinates; empty where the ball fits nowhere).
    """
    box = _fft.mask_bounding_box(mask, [1, 1, 1])
    box_shape = tuple(s.stop - s.start for s in box)
    largest = max(float(r) for r in radii_mm)
    # zeros at least a radius wide between periodic copies, also where the mask touches the field of view
    shape = _fft.padded_shape([n + int(np.ceil(largest / v)) + 1 for n, v in zip(box_shape, voxel_size_mm)], 1.0)
    frame_mask = _fft.pad(np.asarray(mask[box], dtype=np.float32), shape)
    mask_spectrum = _fft.rfftn(frame_mask)
    balls = []
    for radius in radii_mm:
        ball = sphere_kernel(shape, voxel_size_mm, radius)
        balls.append((ball, ball_interior(mask_spectrum, ball, shape) & (frame_mask > 0)))
    return box, shape, balls
