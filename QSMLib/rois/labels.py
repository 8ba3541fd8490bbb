"""Atlas structures brought back to the acquisition grid, keeping each structure's core.

Each AAL3 structure's signed depth (mm from its boundary, positive inside)
is computed on the atlas grid and resampled through the registration to every
voxel of the acquisition (linear interpolation, so the boundary is placed to
a fraction of a voxel). A voxel belongs to the structure it is deepest in,
when that depth reaches the core depth: the outer shell, where partial volume
with the neighbours and the registration's error mix in other tissue, is left
out, as an expert leaves out a structure's edge when drawing an ROI.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..io.nifti import image_from_array
from .template import AAL3_STRUCTURES, load_template

#: Label value -> name of the automatic ROIs (left and right of each structure).
ROI_NAMES: dict[int, str] = {
    2 * number + side + 1: f"{structure}_{('left', 'right')[side]}"
    for number, structure in enumerate(AAL3_STRUCTURES) for side in (0, 1)
}
#: Depth (mm) beyond which the signed distance is not needed (clipped), and the margin of the atlas crop.
_DEPTH_RANGE_MM = (-6.0, 20.0)


@functools.lru_cache(maxsize=1)
def atlas_depth() -> sitk.Image:
    """Signed depth (mm, positive inside) of every ROI of :data:`ROI_NAMES` on the atlas grid, as a vector image.

    Component ``k`` is the depth in ROI ``k + 1``; the boundary (depth 0) is
    half a voxel outside the outermost voxel centres of the structure.
    Cropped to the deep grey matter and clipped to :data:`_DEPTH_RANGE_MM`.

    Returns
    -------
    SimpleITK.Image
        12-component float32 vector image in LPS physical space.
    """
    atlas = load_template().atlas
    values = sitk.GetArrayViewFromImage(atlas)
    structures = np.zeros(values.shape, np.uint8)
    for label, name in ROI_NAMES.items():
        structure, side = name.rsplit("_", 1)
        structures[np.isin(values, AAL3_STRUCTURES[structure][side == "right"])] = label
    index = np.argwhere(structures > 0)
    margin = int(-_DEPTH_RANGE_MM[0]) + 2
    low = np.maximum(index.min(axis=0) - margin, 0)
    high = np.minimum(index.max(axis=0) + margin + 1, structures.shape)
    crop = structures[tuple(slice(a, b) for a, b in zip(low, high))]
    image = sitk.GetImageFromArray(crop)
    image.SetSpacing(atlas.GetSpacing())
    image.SetDirection(atlas.GetDirection())
    image.SetOrigin(atlas.TransformIndexToPhysicalPoint([int(v) for v in low[::-1]]))
    components = []
    for label in ROI_NAMES:
        distance = sitk.SignedMaurerDistanceMap(image == label, insideIsPositive=True, squaredDistance=False,
                                                useImageSpacing=True)
        # Maurer's distance is 0 on the outermost voxels; their faces lie half a voxel further out
        depth = distance + 0.5 * float(np.mean(atlas.GetSpacing()))
        components.append(sitk.Clamp(sitk.Cast(depth, sitk.sitkFloat32), sitk.sitkFloat32, *_DEPTH_RANGE_MM))
    return sitk.Compose(components)


@dataclass
class DepthMap:
    """Depth (mm) of acquisition voxels in every ROI, over the box of the grid near the deep grey matter.

    Attributes
    ----------
    shape : tuple of int
        The acquisition grid (n0, n1, n2).
    region : tuple of slice
        The box of that grid the depths cover (elsewhere every voxel is outside every ROI).
    depth_mm : numpy.ndarray of float32, shape (r0, r1, r2, 12)
        Depth in ROI ``k + 1`` of :data:`ROI_NAMES` (positive inside).
    """

    shape: tuple[int, ...]
    region: tuple[slice, ...]
    depth_mm: np.ndarray

    def labels(self, core_depth_mm: float, min_voxels: int = 0) -> np.ndarray:
        """Label map on the whole grid (int16) of :func:`core_labels`."""
        labels = np.zeros(self.shape, np.int16)
        labels[self.region] = core_labels(self.depth_mm, core_depth_mm, min_voxels)
        return labels


def depth_on_grid(transform: sitk.Transform, affine: np.ndarray, shape: Sequence[int]) -> DepthMap:
    """Depth (mm) of acquisition voxels in every ROI, through ``transform`` (subject -> template).

    Only the box of the acquisition grid that maps into the deep grey matter
    is resampled (found on a 4 mm pass first).

    Parameters
    ----------
    transform : SimpleITK.Transform
        Subject LPS points -> template LPS points.
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm of the acquisition.
    shape : sequence of 3 int
        Acquisition grid shape (n0, n1, n2).

    Returns
    -------
    DepthMap
    """
    depth_atlas = atlas_depth()
    shape = tuple(int(n) for n in shape)
    reference = image_from_array(np.zeros(shape, np.uint8), affine)
    spacing = np.array(reference.GetSpacing())
    factor = np.maximum(np.floor(4.0 / spacing), 1).astype(int)
    coarse = sitk.Resample(depth_atlas, sitk.BinShrink(reference, [int(f) for f in factor]), transform,
                           sitk.sitkLinear, _DEPTH_RANGE_MM[0])
    near = sitk.GetArrayViewFromImage(coarse).max(axis=-1) > -4.0
    if not near.any():
        return DepthMap(shape, (slice(0, 0),) * 3, np.zeros((0, 0, 0, len(ROI_NAMES)), np.float32))
    index = np.argwhere(near)[:, ::-1] * factor  # (x, y, z) index on the full grid
    low = np.maximum(index.min(axis=0) - 2 * factor, 0)
    high = np.minimum(index.max(axis=0) + 3 * factor, reference.GetSize())
    box = sitk.RegionOfInterest(reference, [int(v) for v in high - low], [int(v) for v in low])
    resampled = sitk.Resample(depth_atlas, box, transform, sitk.sitkLinear, _DEPTH_RANGE_MM[0])
    region = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))
    return DepthMap(shape, region, sitk.GetArrayFromImage(resampled))


def core_labels(depth_mm: np.ndarray, core_depth_mm: float, min_voxels: int = 0) -> np.ndarray:
    """Label map (int16, :data:`ROI_NAMES`) of the voxels at least ``core_depth_mm`` inside a structure.

    A voxel belongs to the structure it is deepest in. A structure whose
    core has fewer than ``min_voxels`` voxels (a thin one on a coarse grid)
    keeps its ``min_voxels`` deepest voxels instead, as long as they are
    inside it.

    Parameters
    ----------
    depth_mm : numpy.ndarray, shape (n0, n1, n2, 12)
        Depth in each ROI (e.g. :attr:`DepthMap.depth_mm`).
    core_depth_mm : float
        Minimum depth; 0 keeps whole structures.
    min_voxels : int
        Fewest voxels per structure (when it has that many inside); 0: no
        minimum.

    Returns
    -------
    numpy.ndarray of int16, shape (n0, n1, n2)

    Examples
    --------
    >>> depth = np.full((1, 1, 3, 12), -1.0, np.float32)
    >>> depth[0, 0, 0, 4], depth[0, 0, 1, 4], depth[0, 0, 1, 5] = 2.0, 0.5, 0.7
    >>> core_labels(depth, 1.0).ravel().tolist(), core_labels(depth, 0.0).ravel().tolist()
    ([5, 0, 0], [5, 6, 0])
    >>> core_labels(depth, 1.0, min_voxels=1).ravel().tolist()[1]  # the right one's deepest voxel
    6
    """
    deepest = depth_mm.argmax(axis=-1)
    value = np.take_along_axis(depth_mm, deepest[..., None], axis=-1)[..., 0]
    labels = np.where(value >= core_depth_mm, deepest + 1, 0).astype(np.int16)
    for component in range(depth_mm.shape[-1]):
        if np.count_nonzero(labels == component + 1) >= min_voxels:
            continue
        candidates = np.flatnonzero((deepest.reshape(-1) == component) & (value.reshape(-1) > 0))
        chosen = candidates[np.argsort(value.reshape(-1)[candidates])[::-1][:min_voxels]]
        labels.reshape(-1)[chosen] = component + 1
    return labels
