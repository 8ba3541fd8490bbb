"""Referencing: susceptibility is relative, so fix its zero in a region."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

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
    region = (labels == int(index)) & np.asarray(mask, dtype=bool)
    if not region.any():
        raise QSMInputError(f"Reference label {reference_label!r} has no voxel inside the mask.")
    offset = float(chi_ppm[region].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return referenced, {
        "reference": f"label:{reference_label}",
        "offset_ppm": offset,
        "voxels": int(region.sum()),
    }


#: Referencing methods by registry name: ``method(chi_ppm, mask, *, labels=None,
#: label_names=None, **params)`` -> ``(chi_ppm, info dict)``.
METHODS = {"whole_brain": whole_brain, "label": label}
