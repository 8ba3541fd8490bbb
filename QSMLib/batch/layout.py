"""Where a cohort's derivatives go and what a task costs: acquisitions, records, file names."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..io.bids import bids_name
from ..zero_fill import solving_shape, solving_voxel_mm

PathLike = Union[str, "os.PathLike[str]"]
#: One acquisition's outcome: ``name``, ``subject``, ``session``, ``status``
#: (``processed``, ``skipped`` or ``failed``), ``reason``, ``seconds``,
#: ``warnings``, ``outputs`` (key -> path relative to the derivatives root),
#: ``qc`` (relative PNG path) and ``roi`` (rows of ROI statistics).
Record = dict[str, Any]

#: Output key -> (entities added to the acquisition's, BIDS suffix, extension, sidecar fields).
DERIVATIVES: dict[str, tuple[dict[str, str], str, str, dict[str, Any]]] = {
    "chi": ({}, "Chimap", ".nii.gz", {"Units": "ppm", "Description": "Magnetic susceptibility (chi), referenced"}),
    "mask": ({"desc": "brain"}, "mask", ".nii.gz", {"Type": "Brain", "Description": "Brain mask"}),
    "total_field": ({"desc": "total"}, "fieldmap", ".nii.gz",
                    {"Units": "Hz", "Description": "Total field from the multi-echo phase"}),
    "local_field": ({"desc": "local"}, "fieldmap", ".nii.gz",
                    {"Units": "Hz", "Description": "Local field after background field removal"}),
    "local_mask": ({"desc": "local"}, "mask", ".nii.gz",
                   {"Type": "ROI", "Description": "Where the local field and chi are valid"}),
    "r2star": ({}, "R2starmap", ".nii.gz", {"Units": "1/s", "Description": "R2* relaxation rate"}),
    "t2star": ({}, "T2starmap", ".nii.gz", {"Units": "s", "Description": "T2* relaxation time"}),
    "roi_stats": ({"desc": "roi"}, "stats", ".tsv", {}),
    "rois": ({"desc": "atlas"}, "dseg", ".nii.gz",
             {"Description": "Automatic deep grey matter ROIs: AAL3 structures registered to the magnitude, "
                             "their cores (qsm bids --rois atlas)"}),
    "rois_table": ({"desc": "atlas"}, "dseg", ".tsv", {}),
}
#: Outputs of automatic ROIs (``--rois atlas``): label map, its names (index, name) and the QC figure.
ATLAS_OUTPUTS = ("rois", "rois_table", "rois_qc")
#: Maps that every acquisition writes; ``local_mask``, ``r2star`` and ``t2star`` on request.
ALWAYS = ("chi", "mask", "total_field", "local_field")
OPTIONAL = ("local_mask", "r2star", "t2star")
#: Hidden folder of the derivatives root where tasks write before publishing (so a killed task leaves no
#: empty subject folders behind).
WORK_FOLDER = ".qsm-work"
GROUP_TABLE = "group_roi_stats.tsv"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
METHODS_FILE = "methods.md"

#: Memory of one task: a fixed part for the interpreter and libraries, plus a
#: part per voxel and per voxel and echo. Fitted to the peak RSS of
#: :func:`process_acquisition` in a fresh process that
#: ``python benchmarks/bench_cohort_memory.py --config consensus|fast`` measures
#: (heads of 1.44, 3.42 and 11.5 M voxels, 5 and 9 echoes): 312 MiB + voxels x
#: (75 + 8.2 echoes) B for ``consensus``, 307 MiB + voxels x (80 + 8.1 echoes)
#: B for ``fast``. Each constant is the larger of the two presets' with 25 %
#: added, which covers every measured peak by 26 % or more.
TASK_BASE_BYTES = 391 * 2**20
TASK_BYTES_PER_VOXEL = 101
TASK_BYTES_PER_VOXEL_ECHO = 11
#: A run zero-filled onto a finer grid (``PipelineConfig.zero_fill_mm``) holds the scan's echoes and the fine
#: grid's together: its per-voxel part, counted on the fine grid, is this much larger. ``python
#: benchmarks/bench_cohort_memory.py --config FILE --voxel-sizes 2.0,1.5`` with ``{"zero_fill_mm": 1.0}``: the
#: 2 mm head (1.44 M voxels, 11.5 M zero-filled) peaked at 2482 / 2743 MiB with 5 / 9 echoes, the 1.5 mm head
#: (3.42 M, 11.5 M zero-filled) at 2608 / 2868 MiB; the model covers each by 12-26 %.
ZERO_FILL_MEMORY_FACTOR = 1.4

MISSING_DASK = (
    "Cohort processing runs on Dask, which is not installed. Install the optional dependencies with "
    '`pip install "qsmlib[cohort]"` (dask[distributed] and pydicom) and run the command again.'
)


@dataclass(frozen=True)
class Acquisition:
    """One multi-echo GRE acquisition found in a BIDS dataset.

    Attributes
    ----------
    entities : tuple of (key, value)
        BIDS entities shared by its files (``sub``, ``ses``, ``acq``, ``run``...;
        not ``echo`` or ``part``), in file-name order.
    magnitude, phase : tuple of str
        Absolute paths in echo order (one 4D file each, or one 3D file per echo).
    labels, label_names : str or None
        Label map (``*_dseg.nii.gz``) on the acquisition's grid and its names (TSV).
    n_voxels, n_echoes : int
        Volume size, for the memory estimate (0 when the header is unreadable).
    grid_shape, voxel_size_mm : tuple
        Its grid (array axes) and voxel size (mm), for the memory estimate of
        a run that zero-fills it (empty when the header is unreadable).
    problem : str or None
        Why it cannot be processed (found before any work), or None.
    """

    entities: tuple[tuple[str, str], ...]
    magnitude: tuple[str, ...]
    phase: tuple[str, ...]
    labels: Optional[str] = None
    label_names: Optional[str] = None
    n_voxels: int = 0
    n_echoes: int = 0
    problem: Optional[str] = None
    grid_shape: tuple[int, ...] = ()
    voxel_size_mm: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """The file-name prefix of its derivatives, e.g. ``sub-01_ses-a_run-1``."""
        return "_".join(f"{k}-{v}" for k, v in self.entities)

    @property
    def subject(self) -> str:
        return dict(self.entities)["sub"]

    @property
    def session(self) -> Optional[str]:
        return dict(self.entities).get("ses")

    @property
    def anat_dir(self) -> Path:
        """Its folder relative to a dataset root: ``sub-X[/ses-Y]/anat``."""
        return Path(f"sub-{self.subject}", *([f"ses-{self.session}"] if self.session else []), "anat")

    def output_path(self, key: str) -> Path:
        """Relative path of one derivative (:data:`DERIVATIVES` key, ``qc``, ``rois_qc`` or ``provenance``)."""
        if key == "qc":
            return Path(f"sub-{self.subject}", "figures", bids_name({**dict(self.entities), "desc": "qc"},
                                                                     "Chimap", ".png"))
        if key == "rois_qc":
            return Path(f"sub-{self.subject}", "figures", bids_name({**dict(self.entities), "desc": "atlas"},
                                                                     "dseg", ".png"))
        if key == "provenance":
            return self.anat_dir / bids_name(dict(self.entities), "provenance", ".json")
        extra, suffix, extension, _ = DERIVATIVES[key]
        return self.anat_dir / bids_name({**dict(self.entities), **extra}, suffix, extension)

    def memory_bytes(self, zero_fill_mm: Union[str, float, None] = "auto", inversion: str = "tfi") -> int:
        """Estimated peak memory of its task (see :data:`TASK_BYTES_PER_VOXEL`).

        The voxels counted are those of the grid the stages may solve on
        (``PipelineConfig.zero_fill_mm`` with the configuration's ``inversion``
        method; with ``"auto"``, as if its data were band-limited, which only
        its images can tell).
        """
        per_voxel = self.n_voxels * (TASK_BYTES_PER_VOXEL + TASK_BYTES_PER_VOXEL_ECHO * self.n_echoes)
        if len(self.grid_shape) == 3 and len(self.voxel_size_mm) == 3:
            target = solving_voxel_mm(zero_fill_mm, self.voxel_size_mm, inversion)
            fine = math.prod(solving_shape(self.grid_shape, self.voxel_size_mm, target))
            if fine > self.n_voxels:
                per_voxel = int(ZERO_FILL_MEMORY_FACTOR * per_voxel * fine / self.n_voxels)
        return TASK_BASE_BYTES + per_voxel


@dataclass
class CohortSummary:
    """What a cohort run did: one record per acquisition and the report files."""

    out_dir: Path
    records: list[Record]
    files: dict[str, Path] = field(default_factory=dict)
    cluster: str = ""

    def count(self, status: str) -> int:
        """Acquisitions with this status (``processed``, ``skipped``, ``failed``)."""
        return sum(record["status"] == status for record in self.records)


def empty_record(acquisition: Acquisition) -> Record:
    """A record of ``acquisition`` that says ``failed`` with its known problem, to be filled in."""
    return {"name": acquisition.name, "subject": acquisition.subject, "session": acquisition.session,
            "entities": dict(acquisition.entities), "status": "failed", "reason": acquisition.problem,
            "seconds": None, "warnings": [], "outputs": {}, "qc": None, "roi": []}
