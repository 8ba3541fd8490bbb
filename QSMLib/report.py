"""QC figures: orthogonal slices of maps as a PNG, with no plotting library.

Panels are window-levelled greyscale images assembled with numpy and written
by SimpleITK's PNG writer, so QC needs nothing beyond QSMLib's core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk


def to_display_orientation(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder and flip axes so that axes 0, 1, 2 run (approximately) along R, A, S."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    order, flips = [], []
    for world_axis in range(3):
        weights = np.abs(direction[world_axis]).copy()
        weights[order] = -1.0
        array_axis = int(np.argmax(weights))
        order.append(array_axis)
        flips.append(direction[world_axis, array_axis] < 0)
    display = np.transpose(volume, order)
    for axis, flip in enumerate(flips):
        if flip:
            display = np.flip(display, axis=axis)
    return display


def _window(image: np.ndarray, window: Optional[tuple[float, float]], mask: Optional[np.ndarray]) -> np.ndarray:
    if window is None:
        values = image[mask] if mask is not None and mask.any() else image[np.isfinite(image)]
        low, high = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
    else:
        low, high = window
    scaled = (np.nan_to_num(image) - low) / max(float(high - low), 1e-12)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def orthogonal_slices(display_volume: np.ndarray, centre: Optional[Sequence[int]] = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices (image rows top-down = superior/anterior first)."""
    c = [n // 2 for n in display_volume.shape] if centre is None else list(centre)
    axial = display_volume[:, :, c[2]].T[::-1]
    coronal = display_volume[:, c[1], :].T[::-1]
    sagittal = display_volume[c[0], :, :].T[::-1]
    return [axial, coronal, sagittal]


def qc_montage(
    maps: Sequence[tuple[str, np.ndarray, Optional[tuple[float, float]]]],
    affine: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    gap: int = 4,
) -> np.ndarray:
    """One row per map (axial, coronal, sagittal), as a uint8 image.

    Parameters
    ----------
    maps : sequence of (name, volume, window)
        Volumes in array-axis order; ``window`` (low, high) or None for the
        1st-99th percentile inside ``mask``.
    affine : numpy.ndarray
        Array-index -> world affine (for display orientation).
    mask : numpy.ndarray of bool, optional
        Region for automatic windows and the slice centre.
    """
    display_mask = None if mask is None else to_display_orientation(mask, affine)
    centre = None
    if display_mask is not None and display_mask.any():
        centre = [int(np.round(np.mean(np.nonzero(display_mask)[a]))) for a in range(3)]
    rows = []
    for _, volume, window in maps:
        display = to_display_orientation(np.asarray(volume, dtype=np.float32), affine)
        panels = [_window(s, window, m) for s, m in zip(
            orthogonal_slices(display, centre),
            orthogonal_slices(display_mask, centre) if display_mask is not None else [None] * 3,
        )]
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap))) for p in panels]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, gap), (0, width - r.shape[1]))) for r in rows], axis=0)


def write_png(path: Union[str, Path], image: np.ndarray, *, upscale: int = 2) -> Path:
    """Write a uint8 greyscale image as PNG (nearest-neighbour upscaled for legibility)."""
    path = Path(path)
    enlarged = np.kron(image, np.ones((upscale, upscale), dtype=np.uint8)) if upscale > 1 else image
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(enlarged)), str(path))
    return path
