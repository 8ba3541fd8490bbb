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

    Balls centred on the eroded mask stay inside the mask; the box is padded
    with zeros a radius wide so that, also where the mask reaches the edge of
    the field of view, no ball wraps round onto the other side.

    Returns
    -------
    box : tuple of slice
        The mask's bounding box (plus one voxel).
    shape : tuple of int
        Fast FFT shape that holds the box.
    ball_spectrum : numpy.ndarray of float32
        rfft of the normalised ball of ``radius_mm`` on ``shape``.
    eroded : numpy.ndarray of bool, shape ``shape``
        Voxels whose whole ball lies in the mask (in frame coordinates).
    """
    box = _fft.mask_bounding_box(mask, [1, 1, 1])
    box_shape = tuple(s.stop - s.start for s in box)
    # zeros at least a radius wide between periodic copies, also where the mask touches the field of view
    shape = _fft.padded_shape([n + int(np.ceil(radius_mm / v)) + 1 for n, v in zip(box_shape, voxel_size_mm)], 1.0)
    ball = sphere_kernel(shape, voxel_size_mm, radius_mm)
    frame_mask = _fft.pad(np.asarray(mask[box], dtype=np.float32), shape)
    eroded = ball_interior(_fft.rfftn(frame_mask), ball, shape) & (frame_mask > 0)
    return box, shape, ball, eroded
