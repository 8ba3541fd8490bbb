"""Referencing: susceptibility is relative, so fix its zero in a region.

Methods: the whole brain (the consensus default), the cerebrospinal fluid of
the lateral ventricles (found automatically from the multi-echo magnitude,
or given as a label), or any label of a user label map. Every method
returns the referenced map and a dict that records which reference was used.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ._morphology import ventricle_mask
from .contract import Method, ReferenceResult
from .errors import QSMInputError


def whole_brain(
    chi_ppm: np.ndarray, mask: np.ndarray
) -> ReferenceResult:
    """Subtract the mean susceptibility over ``mask``.

    Returns
    -------
    chi_ppm : numpy.ndarray of float32
        Referenced map, zero outside ``mask``.
    info : dict
        ``reference`` (name), ``offset_ppm`` (value subtracted), ``voxels``.
        (The two come as a :class:`QSMLib.contract.ReferenceResult`.)

    References
    ----------
    QSM Consensus Organization Committee. Recommended implementation of quantitative susceptibility
    mapping for clinical research in the brain: a consensus of the ISMRM electro-magnetic tissue
    properties study group. Magn Reson Med 2024;91:1834-1862.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[0.1, 0.3, 5.0]]], np.float32)
    >>> mask = np.array([[[True, True, False]]])
    >>> referenced, info = whole_brain(chi, mask)
    >>> [round(float(v), 3) for v in referenced.ravel()], info["reference"], round(info["offset_ppm"], 3)
    ([-0.1, 0.1, 0.0], 'whole_brain', 0.2)
    """
    mask = np.asarray(mask, dtype=bool)
    offset = float(chi_ppm[mask].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return ReferenceResult(referenced, {"reference": "whole_brain", "offset_ppm": offset, "voxels": int(mask.sum())})


def label(
    chi_ppm: np.ndarray,
    mask: np.ndarray,
    *,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    reference_label: int | str = 0,
) -> ReferenceResult:
    """Subtract the mean susceptibility of one label (by index or name) inside ``mask``.

    Returns
    -------
    ReferenceResult
        The referenced map (zero outside ``mask``) and ``reference``
        (``label:<name or index>``), ``offset_ppm``, ``voxels``.

    References
    ----------
    QSM Consensus Organization Committee. Recommended implementation of quantitative susceptibility
    mapping for clinical research in the brain: a consensus of the ISMRM electro-magnetic tissue
    properties study group. Magn Reson Med 2024;91:1834-1862.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[0.1, 0.3, 0.5]]], np.float32)
    >>> labels = np.array([[[1, 2, 2]]])
    >>> referenced, info = label(chi, chi > 0, labels=labels, label_names={1: "csf"}, reference_label="csf")
    >>> [round(float(v), 3) for v in referenced.ravel()], info["reference"]
    ([0.0, 0.2, 0.4], 'label:csf')
    """
    region = _label_region(labels, label_names, reference_label, np.asarray(mask, dtype=bool))
    offset = float(chi_ppm[region].mean())
    referenced = np.where(mask, chi_ppm - np.float32(offset), 0).astype(np.float32)
    return ReferenceResult(referenced, {
        "reference": f"label:{reference_label}",
        "offset_ppm": offset,
        "voxels": int(region.sum()),
    })


#: Label names (lower case) that :func:`csf` takes as the ventricles when no ``csf_label`` is given.
CSF_LABEL_NAMES = ("csf", "ventricles", "ventricle", "lateral_ventricles", "lateral_ventricle")


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
) -> ReferenceResult:
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
        (The two come as a :class:`QSMLib.contract.ReferenceResult`.)

    References
    ----------
    Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: morphology enabled dipole inversion with
    automatic uniform cerebrospinal fluid zero reference for quantitative susceptibility mapping.
    Magn Reson Med 2018;79:2795-2803.
    QSM Consensus Organization Committee. Recommended implementation of quantitative susceptibility
    mapping for clinical research in the brain: a consensus of the ISMRM electro-magnetic tissue
    properties study group. Magn Reson Med 2024;91:1834-1862.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[0.02, 0.04, 0.10, 0.20]]], np.float32)
    >>> labels = np.array([[[8, 8, 1, 1]]])
    >>> referenced, info = csf(chi, chi > 0, labels=labels, label_names={8: "ventricles", 1: "caudate"})
    >>> [round(float(v), 3) for v in referenced.ravel()], info["csf_source"]
    ([-0.01, 0.01, 0.07, 0.17], 'label:ventricles')
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
    return ReferenceResult(referenced, {
        "reference": "csf", "csf_source": source, "offset_ppm": offset, "voxels": int(region.sum())})


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


#: Referencing methods by registry name: ``method(chi_ppm, mask, **params)`` ->
#: :class:`QSMLib.contract.ReferenceResult`; each entry declares the pipeline
#: inputs it takes (the user's labels, the magnitude for an automatic CSF mask).
METHODS = {
    "whole_brain": Method(whole_brain),
    "label": Method(label, inputs=("labels", "label_names")),
    "csf": Method(csf, inputs=("magnitude", "voxel_size_mm", "labels", "label_names")),
}
