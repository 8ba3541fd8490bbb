"""Where a cohort's derivatives go and what a task costs: acquisitions, records, file names."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..inversion.tfi import frame_voxels_estimate
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

#: Memory of one task, bytes: a fixed part for the interpreter and libraries, a part per voxel of the grid the
#: stages solve on, per voxel and echo, and per voxel of the inversion's frame
#: (:func:`~QSMLib.inversion.tfi.frame_voxels_estimate`), keyed by whose frame that is. TFI's (the ``consensus``
#: inversion, and the bound for any inversion whose peak was not measured) is the brain's box and its shell of
#: outside sources, which on a slab holds three to four times the scan's voxels (72 mm of sources beyond each
#: face that cuts the brain along B0); SS-TV's (``fast``) is the brain's box and its ball's margin. ``python
#: benchmarks/bench_cohort_memory.py --config consensus,fast --cases ...`` (README, "Sizing and where it runs")
#: measured the peak RSS of :func:`process_acquisition` (a fresh process each) on its head at 2, 1.5 and 1 mm with
#: 5 and 9 echoes, four 1 mm slabs, two heads cropped to the brain and three whole suite heads; for each preset
#: these are the smallest constants (in the sum of estimate over peak) that cover each of its peaks by 25 % or
#: more, each voxel and echo costing what 9 echoes measured over 5 at 1 mm (for ``fast`` the programme puts the
#: per-voxel cost in the frame's, a frame about the brain's box). Before the frame was counted (391 MiB
#: + voxels x (101 + 11 echoes) B) a 56 mm slab with 9 echoes was estimated at 850 MiB and peaked at 1556-1572
#: (two runs), and a whole qsm-forward head at 1657 against 2263-2266 MiB; before SS-TV's frame was counted
#: (stop 67) a ``fast`` task on that slab was estimated at 2061 MiB and peaked at 999.
TASK_MEMORY_BYTES = {
    "tfi": (230 * 2**20, 103, 8, 195),
    "sstv": (603 * 2**20, 0, 9, 232),
}
#: A run zero-filled onto a finer grid (``PipelineConfig.zero_fill_mm``) holds the scan's echoes and the fine
#: grid's together: its per-voxel part, counted on the fine grid, is this much larger. ``python
#: benchmarks/bench_cohort_memory.py --config FILE --voxel-sizes 2.0,1.5`` with ``{"zero_fill_mm": 1.0}``: the
#: 2 mm head (1.44 M voxels, 11.5 M zero-filled) peaked at 2482 / 2743 MiB with 5 / 9 echoes, the 1.5 mm head
#: (3.42 M, 11.5 M zero-filled) at 2608 / 2868 MiB (stop 62); with the frame counted the model covers each by
#: 60-70 % (stop 67), and `low_field_2mm_1p5T` zero-filled by "auto" (1785-1836 MiB) by 81-87 %.
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
    b0_axes : tuple of bool
        Per array axis, whether it lies within 60 degrees of B0 (the scanner's
        z axis, from the header's orientation), for the memory estimate of
        TFI's frame (empty when unknown).
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
    b0_axes: tuple[bool, ...] = ()

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

    def memory_terms(self, zero_fill_mm: Union[str, float, None] = "auto",
                     inversion: str = "tfi") -> tuple[float, float, int]:
        """The voxel counts :meth:`memory_bytes` charges: per voxel, per voxel and echo, per frame voxel.

        The first two are the voxels of the grid the stages may solve on (``PipelineConfig.zero_fill_mm``
        with the configuration's ``inversion`` method; with ``"auto"``, as if its data were band-limited,
        which only its images can tell), times :data:`ZERO_FILL_MEMORY_FACTOR` on a finer grid (the second
        also times the echoes); the third is the frame of the inversion on that grid (0 when the header gave no
        geometry): SS-TV's for ``sstv`` (the ``fast`` preset), else TFI's, the larger (no other inversion's peak
        was measured).
        """
        if len(self.grid_shape) != 3 or len(self.voxel_size_mm) != 3:
            return float(self.n_voxels), float(self.n_voxels * self.n_echoes), 0
        target = solving_voxel_mm(zero_fill_mm, self.voxel_size_mm, inversion)
        shape = solving_shape(self.grid_shape, self.voxel_size_mm, target)
        fine = math.prod(shape)
        voxels = ZERO_FILL_MEMORY_FACTOR * fine if fine > self.n_voxels else float(self.n_voxels)
        voxel_mm = [v * n / m for v, n, m in zip(self.voxel_size_mm, self.grid_shape, shape)]
        return voxels, voxels * self.n_echoes, frame_voxels_estimate(shape, voxel_mm, self.b0_axes,
                                                                     frame_method(inversion))

    def memory_bytes(self, zero_fill_mm: Union[str, float, None] = "auto", inversion: str = "tfi") -> int:
        """Estimated peak memory of its task (see :data:`TASK_MEMORY_BYTES` and :meth:`memory_terms`)."""
        base, per_voxel, per_voxel_echo, per_frame_voxel = TASK_MEMORY_BYTES[frame_method(inversion)]
        voxels, voxel_echoes, frame = self.memory_terms(zero_fill_mm, inversion)
        return int(base + voxels * per_voxel + voxel_echoes * per_voxel_echo + frame * per_frame_voxel)


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


def frame_method(inversion: str) -> str:
    """Whose frame a task of ``inversion`` is charged for (a key of :data:`TASK_MEMORY_BYTES`)."""
    return "sstv" if inversion == "sstv" else "tfi"


def empty_record(acquisition: Acquisition) -> Record:
    """A record of ``acquisition`` that says ``failed`` with its known problem, to be filled in."""
    return {"name": acquisition.name, "subject": acquisition.subject, "session": acquisition.session,
            "entities": dict(acquisition.entities), "status": "failed", "reason": acquisition.problem,
            "seconds": None, "warnings": [], "outputs": {}, "qc": None, "roi": []}
