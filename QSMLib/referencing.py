"""Referencing: susceptibility is relative, so fix its zero in a region.

Methods: the whole brain (the consensus default), the cerebrospinal fluid of
the lateral ventricles (found automatically from the multi-echo magnitude,
or given as a label), or any label of a user label map. Every method
returns the referenced map and a dict that records which reference was used.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import scipy.ndimage as ndi

from .errors import QSMInputError


def whole_brain(
    chi_ppm: np.ndarray, mask: np.ndarray, **_: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Subtract the mean susceptibility over ``mask``.

    Returns
    -------
    chi_ppm : numpy.ndarray of float32
        Referenced map, zero outside ``mask``.
    info : dict
        ``reference`` (name), ``offset_ppm`` (value subtracted), ``voxels``.
    """
    mask = np.asarray(mask, dtype=bool)
    offset = float(chi_ppm[mask].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return referenced, {"reference": "whole_brain", "offset_ppm": offset, "voxels": int(mask.sum())}


def label(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    *,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    reference_label: int | str = 0,
    **_: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Subtract the mean susceptibility of one label (by index or name) inside ``mask``."""
    region = _label_region(labels, label_names, reference_label, np.asarray(mask, dtype=bool))
    offset = float(chi_ppm[region].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return referenced, {
        "reference": f"label:{reference_label}",
        "offset_ppm": offset,
        "voxels": int(region.sum()),
    }


#: Label names (lower case) that :func:`csf` takes as the ventricles when no ``csf_label`` is given.
CSF_LABEL_NAMES = ("csf", "ventricles", "ventricle", "lateral_ventricles", "lateral_ventricle")


def ventricle_mask(
    magnitude: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    r2star_fraction: float = 0.35,
    min_depth_mm: float = 12.0,
    min_volume_ml: float = 0.3,
) -> np.ndarray:
    """Automatic lateral-ventricle (CSF) mask from multi-echo magnitude.

    CSF has the lowest R2* in the brain (about 2-5 1/s at 3 T against 15-25
    in white and grey matter). The apparent decay ``log(|S_1| / |S_last|)`` is
    proportional to R2* whatever the echo times, so voxels whose decay is
    below ``r2star_fraction`` of the brain's median decay count as CSF
    (0.35 of a median near 20 1/s is MEDI's ``R2* < 5-7 1/s`` criterion,
    Liu et al., MRM 2018). Only voxels deeper than ``min_depth_mm`` inside
    the mask are kept (the ventricles lie deep; the sulcal CSF and the
    partial-volume rim do not), after a one-voxel opening against noise,
    and then the connected components of at least ``min_volume_ml`` and at
    least a quarter of the largest one (the two lateral ventricles).

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude of at least two echoes, increasing echo time.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    r2star_fraction, min_depth_mm, min_volume_ml : float
        See above.

    Returns
    -------
    numpy.ndarray of bool, shape (n0, n1, n2)
        The ventricle mask (empty when nothing qualifies).
    """
    magnitude = np.asarray(magnitude, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if magnitude.ndim != 4 or magnitude.shape[0] < 2:
        raise QSMInputError(
            "An automatic CSF mask needs the magnitude of at least two echoes (to see the slow CSF decay); "
            "give a label map with a CSF/ventricle label instead."
        )
    if magnitude.shape[1:] != mask.shape:
        raise QSMInputError(
            f"The magnitude has spatial shape {magnitude.shape[1:]} but the mask has {mask.shape}: they must match."
        )
    first, last = magnitude[0], magnitude[-1]
    usable = mask & (first > 0) & (last > 0)
    if not usable.any():
        return np.zeros(mask.shape, dtype=bool)
    decay = np.zeros(mask.shape, dtype=np.float32)
    decay[usable] = np.log(first[usable] / last[usable])
    median = float(np.median(decay[usable]))
    if median <= 0:
        return np.zeros(mask.shape, dtype=bool)
    depth = ndi.distance_transform_edt(mask, sampling=voxel_size_mm)
    candidates = usable & (decay < r2star_fraction * median) & (depth > min_depth_mm)
    candidates = ndi.binary_opening(candidates)
    components, count = ndi.label(candidates)
    if count == 0:
        return candidates
    sizes = np.bincount(components.ravel())[1:] * float(np.prod(voxel_size_mm)) / 1000.0
    keep = np.flatnonzero((sizes >= min_volume_ml) & (sizes >= 0.25 * sizes.max())) + 1
    return np.isin(components, keep)


def csf(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    *,
    magnitude: Optional[np.ndarray] = None,
    voxel_size_mm: Optional[Sequence[float]] = None,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    csf_label: Union[int, str, None] = None,
    r2star_fraction: float = 0.35,
    min_depth_mm: float = 12.0,
    **_: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Subtract the mean susceptibility of the lateral ventricles (CSF).

    The ventricles come from, in this order: the label ``csf_label`` (index
    or name) of ``labels``; a label named like CSF (:data:`CSF_LABEL_NAMES`);
    or :func:`ventricle_mask` on the multi-echo ``magnitude``.

    Parameters
    ----------
    chi_ppm : numpy.ndarray, shape (n0, n1, n2)
        Susceptibility (ppm), unreferenced.
    mask : numpy.ndarray of bool
        Where ``chi_ppm`` is valid.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2), optional
        Multi-echo magnitude for the automatic ventricle mask.
    voxel_size_mm : sequence of 3 float, optional
        Voxel size (needed by the automatic mask).
    labels, label_names : optional
        A label map and its names.
    csf_label : int or str, optional
        The label that marks the ventricles.
    r2star_fraction, min_depth_mm : float
        Passed to :func:`ventricle_mask`.

    Returns
    -------
    chi_ppm : numpy.ndarray of float32
        Referenced map, zero outside ``mask``.
    info : dict
        ``reference`` ("csf"), ``csf_source`` (the label used, or
        "automatic"), ``offset_ppm``, ``voxels``.
    """
    mask = np.asarray(mask, dtype=bool)
    region, source = None, ""
    if csf_label is not None:
        region, source = _label_region(labels, label_names, csf_label, mask), f"label:{csf_label}"
    elif labels is not None and label_names:
        for index, name in label_names.items():
            if str(name).lower() in CSF_LABEL_NAMES:
                candidate = (np.asarray(labels) == int(index)) & mask
                if candidate.any():
                    region, source = candidate, f"label:{name}"
                    break
    if region is None:
        if magnitude is None or voxel_size_mm is None:
            raise QSMInputError(
                "CSF referencing needs a label map with a CSF/ventricle label (or csf_label), or the multi-echo "
                "magnitude and voxel size to find the ventricles automatically."
            )
        region = ventricle_mask(magnitude, mask, voxel_size_mm, r2star_fraction=r2star_fraction,
                                min_depth_mm=min_depth_mm) & mask
        source = f"automatic (decay < {r2star_fraction:g} x brain median, deeper than {min_depth_mm:g} mm)"
        if not region.any():
            raise QSMInputError(
                "No lateral-ventricle voxels were found automatically (no deep voxels with CSF-like slow decay): "
                "give a CSF label (csf_label) or use whole_brain referencing."
            )
    offset = float(chi_ppm[region].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return referenced, {"reference": "csf", "csf_source": source, "offset_ppm": offset, "voxels": int(region.sum())}


def _label_region(
    labels: Optional[np.ndarray], label_names: Optional[Mapping[int, str]], reference_label: Union[int, str],
    mask: np.ndarray,
) -> np.ndarray:
    """Voxels of one label (index or name) inside ``mask``; raises when there are none."""
    if labels is None:
        raise QSMInputError("Label referencing needs a label map (--labels).")
    index = reference_label
    if isinstance(reference_label, str):
        names = {name: key for key, name in (label_names or {}).items()}
        if reference_label not in names:
            raise QSMInputError(
                f"Reference label {reference_label!r} is not in the label table {sorted(names)}."
            )
        index = names[reference_label]
    region = (np.asarray(labels) == int(index)) & mask
    if not region.any():
        raise QSMInputError(f"Reference label {reference_label!r} has no voxel inside the mask.")
    return region


#: Referencing methods by registry name: ``method(chi_ppm, mask, *, labels=None,
#: label_names=None, **params)`` -> ``(chi_ppm, info dict)``; ``csf`` also
#: accepts ``magnitude`` (echo, n0, n1, n2) and ``voxel_size_mm``.
METHODS = {"whole_brain": whole_brain, "label": label, "csf": csf}
