"""Cohort processing: a BIDS dataset in, a BIDS derivatives dataset out, on Dask.

One task per multi-echo GRE acquisition (``*_part-mag_MEGRE`` and
``*_part-phase_MEGRE`` files of one subject/session/acquisition/run). A task
takes file paths, not arrays, so it runs on any Dask worker that sees the same
filesystem, and it runs exactly what ``qsm run`` runs (the same loader,
pipeline and :func:`~QSMLib.io.results.write_outputs`), so its chi equals a
single ``qsm run`` on the same files bit for bit.

Outputs of an acquisition ``sub-01_ses-a_run-1`` land in
``OUT/sub-01/ses-a/anat/`` (QC montage in ``OUT/sub-01/figures/``)::

    sub-01_ses-a_run-1_Chimap.nii.gz               chi, ppm (+ .json sidecar, Units)
    sub-01_ses-a_run-1_desc-brain_mask.nii.gz      brain mask
    sub-01_ses-a_run-1_desc-total_fieldmap.nii.gz  total field, Hz
    sub-01_ses-a_run-1_desc-local_fieldmap.nii.gz  local field, Hz
    sub-01_ses-a_run-1_R2starmap.nii.gz            R2*, 1/s (and _T2starmap, s) with relaxometry
    sub-01_ses-a_run-1_desc-roi_stats.tsv          ROI statistics, with a label map
    sub-01_ses-a_run-1_provenance.json             written last; lists every output's SHA-256

Writes are atomic: a task writes into a private folder, moves the files into
place and writes the provenance file last. An acquisition counts as complete
only when its provenance file exists, names the same configuration, outputs
and input checksums, and every listed output has the listed SHA-256;
anything else (a killed run, a deleted or edited output, changed inputs or
configuration) is redone.

Dask and its ``distributed`` scheduler are optional dependencies
(``pip install "qsmlib[cohort]"``), imported only here, when a cohort runs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import SimpleITK as sitk

from ._progress import CancelToken, ProgressCallback, check_cancel, report
from ._version import __version__
from .errors import QSMInputError
from .io.bids import (
    bids_name,
    dataset_description,
    parse_bids_name,
    sidecar_path,
    write_json_atomic,
    write_text_atomic,
)
from .io.results import file_checksum
from .pipeline import PRESETS, load_config
from .roi import COLUMNS as ROI_COLUMNS

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
}
#: Maps that every acquisition writes; ``local_mask``, ``r2star`` and ``t2star`` on request.
ALWAYS = ("chi", "mask", "total_field", "local_field")
OPTIONAL = ("local_mask", "r2star", "t2star")
QC_WINDOW_CHI_PPM = (-0.15, 0.25)
GROUP_TABLE = "group_roi_stats.tsv"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
METHODS_FILE = "methods.md"

#: Memory of one task: a fixed part for the interpreter, libraries and the
#: Dask worker, plus a part per voxel and per voxel and echo. Measured peak
#: RSS of :func:`process_acquisition` in a fresh process (heads of 0.9, 2.2 and
#: 7.6 M voxels, 5 and 9 echoes, see docs/cohort.md): 160 MiB + voxels x
#: (290 + 14 echoes) B for ``consensus``, (12 + 40 echoes) B for ``fast``;
#: these constants cover both with about 30 % to spare.
TASK_BASE_BYTES = 400 * 2**20
TASK_BYTES_PER_VOXEL = 400
TASK_BYTES_PER_VOXEL_ECHO = 40

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
        """Relative path of one derivative (:data:`DERIVATIVES` key, ``qc`` or ``provenance``)."""
        if key == "qc":
            return Path(f"sub-{self.subject}", "figures", bids_name({**dict(self.entities), "desc": "qc"},
                                                                     "Chimap", ".png"))
        if key == "provenance":
            return self.anat_dir / bids_name(dict(self.entities), "provenance", ".json")
        extra, suffix, extension, _ = DERIVATIVES[key]
        return self.anat_dir / bids_name({**dict(self.entities), **extra}, suffix, extension)

    def memory_bytes(self) -> int:
        """Estimated peak memory of its task (see :data:`TASK_BYTES_PER_VOXEL`)."""
        return TASK_BASE_BYTES + self.n_voxels * (TASK_BYTES_PER_VOXEL + TASK_BYTES_PER_VOXEL_ECHO * self.n_echoes)


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


# --- discovery ------------------------------------------------------------------------------

def find_acquisitions(
    bids_root: PathLike,
    participant_labels: Optional[Sequence[str]] = None,
    labels_dir: Optional[PathLike] = None,
) -> list[Acquisition]:
    """Multi-echo GRE acquisitions of a BIDS dataset, one per subject/session/acq/run.

    Parameters
    ----------
    bids_root : path
        The dataset root (holding ``sub-*`` folders).
    participant_labels : sequence of str, optional
        Only these subjects (with or without the ``sub-`` prefix).
    labels_dir : path, optional
        A derivatives folder with label maps on each acquisition's grid:
        ``sub-X/[ses-Y/]anat/<acquisition prefix>[_...]_dseg.nii.gz`` (or a
        subject/session-level ``sub-X[_ses-Y][_...]_dseg.nii.gz``), with names
        in a sibling ``.tsv`` or in ``dseg.tsv`` at its root.

    Returns
    -------
    list of Acquisition
        Sorted by name; those that cannot be processed carry a ``problem``.
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise QSMInputError(f"The BIDS folder {root} does not exist: give the dataset root (with sub-* folders).")
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if participant_labels:
        wanted = {label[4:] if label.startswith("sub-") else label for label in participant_labels}
        missing = sorted(wanted - {p.name[4:] for p in subjects})
        if missing:
            raise QSMInputError(f"No subject folder for participant label(s) {', '.join(missing)} in {root}; "
                                f"found {', '.join(p.name for p in subjects) or 'none'}.")
        subjects = [p for p in subjects if p.name[4:] in wanted]
    groups: dict[tuple[tuple[str, str], ...], dict[str, dict[Optional[str], Path]]] = {}
    for subject in subjects:
        for anat in [subject / "anat", *sorted(subject.glob("ses-*/anat"))]:
            for path in sorted(anat.glob("*_MEGRE.nii*")):
                parsed = parse_bids_name(path.name)
                if parsed is None or parsed[2] not in (".nii", ".nii.gz"):
                    continue
                entities = dict(parsed[0])
                part = entities.pop("part", "mag")
                echo = entities.pop("echo", None)
                groups.setdefault(tuple(entities.items()), {}).setdefault(part, {})[echo] = path
    acquisitions = [_acquisition(key, parts, labels_dir) for key, parts in groups.items()]
    if not acquisitions:
        raise QSMInputError(
            f"No multi-echo GRE data found in {root}: expected files such as "
            "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz and ..._part-phase_MEGRE.nii.gz."
        )
    return sorted(acquisitions, key=lambda a: a.name)


def _acquisition(key: tuple[tuple[str, str], ...], parts: dict[str, dict[Optional[str], Path]],
                 labels_dir: Optional[PathLike]) -> Acquisition:
    def problem(reason: str) -> Acquisition:
        return Acquisition(key, (), (), problem=reason)

    unsupported = sorted(set(parts) - {"mag", "phase"})
    if unsupported:
        return problem(f"parts {', '.join(unsupported)} are not supported: give part-mag and part-phase files "
                       "(qsm dicom2bids converts real/imaginary DICOM to magnitude and phase).")
    if "phase" not in parts or "mag" not in parts:
        return problem(f"no part-{'phase' if 'phase' not in parts else 'mag'} files: QSM needs magnitude and phase.")
    if set(parts["mag"]) != set(parts["phase"]):
        return problem(f"magnitude echoes {_echo_list(parts['mag'])} and phase echoes "
                       f"{_echo_list(parts['phase'])} differ: every echo needs both parts.")
    numbers = list(parts["mag"])
    if None in numbers and len(numbers) > 1:
        return problem("files with and without an echo entity: give one 4D file per part or one file per echo.")
    if None not in numbers and not all(n.isdigit() for n in numbers):
        return problem(f"echo entities {_echo_list(parts['mag'])} are not integers.")
    order = sorted(numbers, key=lambda n: int(n) if n is not None else 0)
    magnitude = tuple(str(parts["mag"][n].resolve()) for n in order)
    phase = tuple(str(parts["phase"][n].resolve()) for n in order)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(magnitude[0])
        reader.ReadImageInformation()
        size = reader.GetSize()
    except RuntimeError as error:
        return Acquisition(key, magnitude, phase, problem=f"cannot read {Path(magnitude[0]).name} "
                           f"({str(error).strip().splitlines()[-1]}).")
    n_voxels = int(size[0] * size[1] * size[2]) if len(size) >= 3 else 0
    n_echoes = len(magnitude) if len(size) < 4 else int(size[3])
    labels, names, reason = _find_labels(labels_dir, dict(key)) if labels_dir else (None, None, None)
    return Acquisition(key, magnitude, phase, labels, names, n_voxels, n_echoes, reason)


def _echo_list(files: Mapping[Optional[str], Path]) -> str:
    return "[" + ", ".join(str(n) for n in sorted(files, key=str)) + "]"


def _find_labels(labels_dir: PathLike, entities: dict[str, str]) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(label map, label names, problem) of one acquisition in a derivatives folder."""
    root = Path(labels_dir)
    if not root.is_dir():
        raise QSMInputError(f"The label folder {root} does not exist.")
    folder = root / f"sub-{entities['sub']}" / (f"ses-{entities['ses']}" if "ses" in entities else "") / "anat"
    candidates = sorted(folder.glob("*_dseg.nii*"))
    prefix = "_".join(f"{k}-{v}" for k, v in entities.items()) + "_"
    level = "_".join(f"{k}-{entities[k]}" for k in ("sub", "ses") if k in entities) + "_"
    exact = [p for p in candidates if p.name.startswith(prefix)]
    # A subject/session-level label map serves every run, so it must not name an acq or run itself.
    shared = [p for p in candidates if p.name.startswith(level)
              and not {"acq", "run"} & set((parse_bids_name(p.name) or ({},))[0])]
    for matches in (exact, shared):
        if len(matches) > 1:
            return None, None, f"several label maps match: {', '.join(p.name for p in matches)}; keep one."
        if matches:
            names = sidecar_path(matches[0]).with_suffix(".tsv")
            names = names if names.is_file() else root / "dseg.tsv"
            return str(matches[0].resolve()), (str(names.resolve()) if names.is_file() else None), None
    return None, None, None


# --- one task -------------------------------------------------------------------------------

def task_signature(acquisition: Acquisition, config: Mapping[str, Any], outputs: Sequence[str],
                   phase_sign: int) -> dict[str, Any]:
    """Everything an acquisition's derivatives depend on, as JSON-ready data.

    The configuration, the requested outputs, the phase sign, and the SHA-256
    of every input (images in echo order, their sidecars, label map and
    names), as a list because the order of the echoes matters.
    """
    inputs = [*acquisition.magnitude, *acquisition.phase]
    inputs += [str(sidecar_path(Path(p))) for p in inputs]
    inputs += [p for p in (acquisition.labels, acquisition.label_names) if p]
    signature = {
        "config": dict(config), "outputs": sorted(outputs), "phase_sign": int(phase_sign),
        "inputs": [[Path(p).name, file_checksum(p) if Path(p).is_file() else None] for p in inputs],
    }
    return json.loads(json.dumps(signature))


def process_acquisition(acquisition: Acquisition, out_dir: str, config: Mapping[str, Any],
                        outputs: Sequence[str] = (), phase_sign: int = 1) -> Record:
    """Reconstruct one acquisition into the derivatives folder (the body of a Dask task).

    Parameters
    ----------
    acquisition : Acquisition
        Its input files (absolute paths, seen by the worker).
    out_dir : str
        The derivatives root (absolute, seen by the worker).
    config : mapping
        ``PipelineConfig.to_dict()``.
    outputs : sequence of str
        Optional maps to write as well (:data:`OPTIONAL`).
    phase_sign : {1, -1}
        Phase handedness, as ``qsm run --phase-sign``.

    Returns
    -------
    Record
        ``status`` ``processed`` with the outputs, or ``failed`` with the
        reason; a failure of this acquisition never raises, so it cannot
        stop the other tasks.
    """
    began = time.perf_counter()
    record: Record = _record(acquisition)
    anat = Path(out_dir) / acquisition.anat_dir
    try:
        anat.mkdir(parents=True, exist_ok=True)
        # A rerun must never trust a set that this run is about to replace, and a killed run's
        # private folder is garbage: both go before any work.
        (Path(out_dir) / acquisition.output_path("provenance")).unlink(missing_ok=True)
        for stale in anat.glob(f".qsm-work-{acquisition.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            record.update(_reconstruct(acquisition, Path(out_dir), anat, config, outputs, phase_sign))
        record["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
        record["status"] = "processed"
    except QSMInputError as error:
        record.update(status="failed", reason=str(error))
    except (OSError, EOFError, zlib.error) as error:  # e.g. a truncated .nii.gz
        record.update(status="failed", reason=_unreadable_input(acquisition, error))
    except MemoryError:
        record.update(status="failed", reason="out of memory: give the workers more memory (fewer per machine).")
    except Exception as error:  # noqa: BLE001 - one acquisition's crash is reported, not propagated
        record.update(status="failed", reason=f"internal error {type(error).__name__}: {error}",
                      traceback=traceback.format_exc())
    record["seconds"] = round(time.perf_counter() - began, 3)
    if record["status"] == "failed":
        _remove_empty_folders(anat, Path(out_dir))
    return record


def _unreadable_input(acquisition: Acquisition, error: BaseException) -> str:
    """Name the input file that cannot be read (only looked for once reading has failed)."""
    from .io.nifti import read_volume

    for path in (*acquisition.magnitude, *acquisition.phase, acquisition.labels):
        if path:
            try:
                read_volume(path)
            except (QSMInputError, OSError, EOFError, zlib.error) as problem:
                return (f"{Path(path).name} is corrupt or truncated ({type(problem).__name__}: {problem}); "
                        "replace it and run again.")
    return f"cannot read or write a file ({type(error).__name__}: {error})."


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents up to ``root`` while they are empty (a failed task leaves none)."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop
            return
        folder = folder.parent


def _record(acquisition: Acquisition) -> Record:
    return {"name": acquisition.name, "subject": acquisition.subject, "session": acquisition.session,
            "entities": dict(acquisition.entities), "status": "failed", "reason": acquisition.problem,
            "seconds": None, "warnings": [], "outputs": {}, "qc": None, "roi": []}


def _reconstruct(acquisition: Acquisition, out_dir: Path, anat: Path, config: Mapping[str, Any],
                 outputs: Sequence[str], phase_sign: int) -> Record:
    # The same helpers as `qsm run`, so that a cohort task and `qsm run` are one code path.
    from argparse import Namespace

    from .cli import _labels_and_names, _result_maps
    from .io.nifti import load_acquisition
    from .io.results import MAP_FILES, write_outputs
    from .pipeline import PipelineConfig, run_pipeline
    from .report import qc_montage, write_png

    signature = task_signature(acquisition, config, outputs, phase_sign)
    pipeline_config = PipelineConfig.from_dict(dict(config))
    loaded, info = load_acquisition(list(acquisition.magnitude), list(acquisition.phase), phase_sign=phase_sign)
    labels, names = _labels_and_names(Namespace(labels=acquisition.labels, label_names=acquisition.label_names),
                                      loaded.affine, loaded.spatial_shape)
    result = run_pipeline(loaded, pipeline_config, labels=labels, label_names=names)
    maps = _result_maps(result, [o for o in outputs if o in MAP_FILES])
    for key in ("r2star", "t2star"):
        if key in outputs or key in result.maps:
            if key not in result.maps:
                raise QSMInputError(f"{key} was requested but the configuration computes no R2*/T2* maps: "
                                    'set {"relaxometry": {"method": "arlo"}} (or "loglinear") in --config.')
            maps[key] = result.maps[key]
    sources = [f"bids:raw:{(acquisition.anat_dir / Path(p).name).as_posix()}"
               for p in (*acquisition.magnitude, *acquisition.phase)]
    sidecars = {f"sidecar-{key}.json": json.dumps({**DERIVATIVES[key][3], "Sources": sources}, indent=2).encode()
                for key in maps}
    inputs = {"command": "qsm bids", "acquisition": acquisition.name, **info,
              "echo_times_s": list(loaded.echo_times_s), "b0_tesla": loaded.b0_tesla,
              "b0_direction": list(loaded.b0_direction), "voxel_size_mm": list(loaded.voxel_size_mm),
              "files": {p: file_checksum(p) for p in (*acquisition.magnitude, *acquisition.phase,
                                                       acquisition.labels) if p}}
    work = Path(tempfile.mkdtemp(prefix=f".qsm-work-{acquisition.name}-", dir=anat))
    try:
        written = write_outputs(work, maps, loaded.affine, roi_rows=result.roi if result.roi else None,
                                provenance=result.provenance(inputs), extra_files=sidecars)
        montage = qc_montage(
            [("magnitude", loaded.magnitude[0], None), ("total field (Hz)", result.total_field_hz, None),
             ("local field (Hz)", result.local_field_hz, None), ("chi (ppm)", result.chi_ppm, QC_WINDOW_CHI_PPM)],
            loaded.affine, mask=result.mask, outline=result.mask,
        )
        written["qc"] = write_png(work / "qc.png", montage)
        published = _publish(acquisition, out_dir, written, signature, sorted(maps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"outputs": published, "qc": published.get("qc"), "roi": result.roi, "reason": None}


def _publish(acquisition: Acquisition, out_dir: Path, written: Mapping[str, Path], signature: dict[str, Any],
             map_keys: Sequence[str]) -> dict[str, str]:
    """Move the finished files into place, then write the provenance file that vouches for them."""
    targets: dict[str, Path] = {key: acquisition.output_path(key) for key in (*map_keys, "qc")}
    if "roi_stats" in written:
        targets["roi_stats"] = acquisition.output_path("roi_stats")
    moves = [(written[key], target) for key, target in targets.items()]
    moves += [(written[f"sidecar-{key}"], targets[key].with_name(targets[key].name[:-7] + ".json"))
              for key in map_keys]
    checksums: dict[str, str] = {}
    for source, target in moves:
        (out_dir / target).parent.mkdir(parents=True, exist_ok=True)
        checksums[target.as_posix()] = file_checksum(source)
        os.replace(source, out_dir / target)
    provenance = json.loads(Path(written["provenance"]).read_text())
    provenance["derivatives"] = {"acquisition": acquisition.name, "signature": signature, "outputs": checksums}
    write_json_atomic(out_dir / acquisition.output_path("provenance"), provenance)
    published = {key: target.as_posix() for key, target in targets.items()}
    published["provenance"] = acquisition.output_path("provenance").as_posix()
    return published


def completed_record(acquisition: Acquisition, out_dir: PathLike, config: Mapping[str, Any],
                     outputs: Sequence[str], phase_sign: int) -> Optional[Record]:
    """The record of an acquisition whose derivatives are complete and valid, else None.

    Complete and valid: the provenance file exists, its signature (config,
    outputs, phase sign, input checksums) equals this run's, and every output
    it lists exists with the listed SHA-256.
    """
    out_dir = Path(out_dir)
    path = out_dir / acquisition.output_path("provenance")
    if acquisition.problem or not path.is_file():
        return None
    try:
        derivatives = json.loads(path.read_text())["derivatives"]
        listed: dict[str, str] = derivatives["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if derivatives.get("signature") != task_signature(acquisition, config, outputs, phase_sign):
        return None
    expected = {acquisition.output_path(key).as_posix() for key in (*ALWAYS, *outputs, "qc")}
    if acquisition.labels:
        expected.add(acquisition.output_path("roi_stats").as_posix())
    if not expected <= set(listed):
        return None
    for relative, digest in listed.items():
        if not (out_dir / relative).is_file() or file_checksum(out_dir / relative) != digest:
            return None
    record = _record(acquisition)
    by_path = {acquisition.output_path(key).as_posix(): key for key in (*DERIVATIVES, "qc")}
    published = {by_path[p]: p for p in listed if p in by_path}
    published["provenance"] = acquisition.output_path("provenance").as_posix()
    roi_path = published.get("roi_stats")
    record.update(status="skipped", reason=None, outputs=published, qc=published.get("qc"),
                  roi=read_roi_tsv(out_dir / roi_path) if roi_path else [])
    return record


def read_roi_tsv(path: PathLike) -> list[dict[str, Any]]:
    """Rows of a ROI statistics TSV (as written by :func:`QSMLib.roi.format_tsv`), numbers parsed."""
    rows = []
    for row in csv.DictReader(io.StringIO(Path(path).read_text()), delimiter="\t"):
        rows.append({key: (row[key] if key == "name" else
                           int(row[key]) if key in ("label", "voxels") else float(row[key])) for key in ROI_COLUMNS})
    return rows


# --- Dask -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterPlan:
    """Size of a local Dask cluster: one single-threaded worker per concurrent task.

    A worker runs one task at a time (one thread), so its memory limit bounds
    one task; the FFTs inside a task use every core by themselves.
    """

    n_workers: int
    memory_limit_bytes: int
    note: str = ""


def plan_local_cluster(task_bytes: int, n_tasks: int, *, cpu_count: int, available_bytes: int,
                       requested_workers: Optional[int] = None) -> ClusterPlan:
    """As many workers as cores (or as requested) and tasks, but no more than fit in memory.

    Parameters
    ----------
    task_bytes : int
        Peak memory of the largest task (:meth:`Acquisition.memory_bytes`).
    n_tasks : int
        Tasks to run (more workers than tasks would idle).
    cpu_count : int
        Cores of the machine.
    available_bytes : int
        Memory free now; 10 % of it is left to the client and the system.
    requested_workers : int, optional
        ``--workers`` (default ``cpu_count``); fewer, with a note, when that
        many would not fit in memory.

    Returns
    -------
    ClusterPlan
        Workers and each one's memory limit (the usable memory shared out,
        at least ``task_bytes``).
    """
    usable = int(available_bytes * 0.9)
    fit = max(1, usable // max(task_bytes, 1))
    wanted = requested_workers or cpu_count
    n_workers = max(1, min(wanted, n_tasks, fit))
    gib = 2.0**30
    note = ""
    if task_bytes > usable:
        note = (f"one task needs about {task_bytes / gib:.1f} GiB but only {usable / gib:.1f} GiB are free: "
                "it may run out of memory.")
    elif n_workers < min(wanted, n_tasks):
        note = (f"workers reduced from {min(wanted, n_tasks)} to {n_workers}: each task needs about "
                f"{task_bytes / gib:.1f} GiB and {usable / gib:.1f} GiB are free.")
    return ClusterPlan(n_workers, max(task_bytes, usable // n_workers), note)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise QSMInputError(MISSING_DASK) from None
    return distributed


def _worker_environment(out_dir: str) -> tuple[str, bool]:
    """QSMLib's version on a worker and whether it sees the output folder (run on every worker)."""
    from ._version import __version__ as version

    return version, os.path.isdir(out_dir)


class _Client:
    """A Dask client on a new local cluster or an existing scheduler; closes what it started."""

    def __init__(self, scheduler: Optional[str], plan: Optional[ClusterPlan], out_dir: Path):
        distributed = _import_distributed()
        self.cluster = None
        if scheduler:
            try:
                self.client = distributed.Client(scheduler, timeout="20s", set_as_default=False)
            except (OSError, TimeoutError) as error:
                raise QSMInputError(f"Cannot reach the Dask scheduler at {scheduler} ({error}). Start one with "
                                    "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out "
                                    "--scheduler to use this machine.") from None
            self.description = f"Dask scheduler {scheduler}"
        else:
            assert plan is not None
            self.cluster = distributed.LocalCluster(
                n_workers=plan.n_workers, threads_per_worker=1, memory_limit=plan.memory_limit_bytes,
                processes=True, dashboard_address=None, silence_logs=logging.ERROR,
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.description = (f"local Dask cluster: {plan.n_workers} worker(s) x 1 thread, "
                                f"{plan.memory_limit_bytes / 2**30:.1f} GiB each")
        try:
            self._check_workers(scheduler, str(out_dir))
        except BaseException:
            self.close()
            raise

    def _check_workers(self, scheduler: Optional[str], out_dir: str) -> None:
        from ._version import __version__ as version

        try:
            self.client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise QSMInputError(f"The Dask scheduler {scheduler} has no workers: start some with "
                                f"`dask worker {scheduler}`.") from None
        try:
            environments = self.client.run(_worker_environment, out_dir)
        except ImportError as error:
            raise QSMInputError(f"The Dask workers cannot import QSMLib ({error}): install the same qsmlib in "
                                "the workers' environment.") from None
        wrong = {w: v for w, (v, _) in environments.items() if v != version}
        if wrong:
            raise QSMInputError(f"Dask workers run other QSMLib versions ({wrong}) than this one ({version}): "
                                "install the same version everywhere so that results agree.")
        blind = sorted(w for w, (_, sees) in environments.items() if not sees)
        if blind:
            raise QSMInputError(f"Dask worker(s) {', '.join(blind)} cannot see {out_dir}: the inputs and the "
                                "output folder must be on a filesystem shared by all workers.")
        self.workers = len(environments)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _run_tasks(client: Any, acquisitions: Sequence[Acquisition], out_dir: Path, config: Mapping[str, Any],
               outputs: Sequence[str], phase_sign: int, progress: ProgressCallback,
               on_record: Optional[Callable[[Record], None]], cancel: CancelToken) -> list[Record]:
    """Submit one task per acquisition and collect the records as they finish."""
    run_id = uuid.uuid4().hex[:8]
    futures = {
        client.submit(process_acquisition, acquisition, str(out_dir), dict(config), tuple(outputs), phase_sign,
                      key=f"qsm-{acquisition.name}-{run_id}", pure=False): acquisition
        for acquisition in acquisitions
    }
    records: list[Record] = []
    pending = set(futures)
    started = time.monotonic()
    report(progress, 0.0, f"cohort: 0/{len(futures)} acquisitions")
    try:
        while pending:
            check_cancel(cancel)
            # Polled rather than waited on, so that a cancel request is seen within a fraction of a second.
            done = [future for future in pending if future.done()]
            if not done:
                time.sleep(0.2)
                continue
            pending.difference_update(done)
            for future in done:
                records.append(_future_record(future, futures[future]))
                if on_record is not None:
                    on_record(records[-1])
                finished = len(records)
                remaining = (time.monotonic() - started) / finished * (len(futures) - finished)
                failed = sum(r["status"] == "failed" for r in records)
                report(progress, finished / len(futures), f"cohort: {finished}/{len(futures)} acquisitions, "
                       f"{failed} failed, ETA {_duration(remaining)}")
    except BaseException:
        client.cancel(list(pending))
        raise
    return records


def _future_record(future: Any, acquisition: Acquisition) -> Record:
    """A task's record, or a failure record when the task itself could not run or return."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: reported for this acquisition only
        record = _record(acquisition)
        gib = acquisition.memory_bytes() / 2**30
        died = type(error).__name__ == "KilledWorker"
        record["reason"] = (f"the worker running it died (out of memory? it needs about {gib:.1f} GiB)"
                            if died else f"Dask error {type(error).__name__}: {error}")
        return record


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 07 min`` (no colons: progress messages use them as separators)."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


# --- the cohort -----------------------------------------------------------------------------

def run_cohort(
    bids_root: PathLike,
    out_dir: PathLike,
    *,
    participant_labels: Optional[Sequence[str]] = None,
    config: Union[str, Path, None] = None,
    outputs: Sequence[str] = (),
    labels_dir: Optional[PathLike] = None,
    phase_sign: int = 1,
    scheduler: Optional[str] = None,
    n_workers: Optional[int] = None,
    overwrite: bool = False,
    progress: ProgressCallback = None,
    on_record: Optional[Callable[[Record], None]] = None,
    cancel: CancelToken = None,
) -> CohortSummary:
    """Process every multi-echo GRE acquisition of a BIDS dataset into BIDS derivatives.

    Parameters
    ----------
    bids_root, out_dir : path
        Input dataset and derivatives folder (created; may be inside
        ``bids_root/derivatives``).
    participant_labels : sequence of str, optional
        Only these subjects.
    config : str or path, optional
        Preset name or JSON configuration (default ``consensus``).
    outputs : sequence of str
        Extra maps (:data:`OPTIONAL`: ``local_mask``, ``r2star``, ``t2star``).
    labels_dir : path, optional
        Label maps for ROI statistics (see :func:`find_acquisitions`).
    phase_sign : {1, -1}
        Phase handedness of the whole dataset.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); default:
        a local cluster sized by :func:`plan_local_cluster`.
    n_workers : int, optional
        Local cluster workers (default: cores, limited by memory).
    overwrite : bool
        Redo acquisitions whose derivatives are already complete.
    progress : callable(fraction, message), optional
        Overall progress (finished tasks / tasks, with an ETA).
    on_record : callable(record), optional
        Called with each acquisition's record as it is known.
    cancel : threading.Event or callable, optional
        Stops waiting, cancels the tasks not yet finished, raises QSMCancelled.

    Returns
    -------
    CohortSummary
        Records of every acquisition (processed, skipped as complete, or
        failed with the reason) and the report files written.
    """
    from .io.results import check_output_folder

    out = Path(out_dir).resolve()
    if scheduler and n_workers:
        raise QSMInputError("Give either --scheduler (an existing Dask cluster) or --workers (a local one), not both.")
    if n_workers is not None and n_workers < 1:
        raise QSMInputError(f"--workers must be at least 1, got {n_workers}.")
    if phase_sign not in (1, -1):
        raise QSMInputError(f"The phase sign must be +1 or -1, got {phase_sign}.")
    unknown = sorted(set(outputs) - set(OPTIONAL))
    if unknown:
        raise QSMInputError(f"Unknown output(s) {unknown}; choose from {', '.join(OPTIONAL)}.")
    config_dict = load_config(config).to_dict()
    _import_distributed()
    acquisitions = find_acquisitions(bids_root, participant_labels, labels_dir)
    if out == Path(bids_root).resolve():
        raise QSMInputError("The output folder is the BIDS dataset itself: write the derivatives to their own "
                            "folder, e.g. BIDS_ROOT/derivatives/qsm.")
    check_output_folder(out, [], overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    files = {"dataset_description": _write_description(out, Path(bids_root).resolve())}

    records: dict[str, Record] = {}
    todo: list[Acquisition] = []
    for acquisition in acquisitions:
        done = None if overwrite else completed_record(acquisition, out, config_dict, outputs, phase_sign)
        if acquisition.problem:
            records[acquisition.name] = _record(acquisition)
        elif done is not None:
            records[acquisition.name] = done
        else:
            todo.append(acquisition)
    for record in records.values():
        if on_record is not None:
            on_record(record)
    description = "none (every acquisition complete or unusable)"
    if todo:
        import psutil

        plan = None if scheduler else plan_local_cluster(
            max(a.memory_bytes() for a in todo), len(todo), cpu_count=psutil.cpu_count() or 1,
            available_bytes=psutil.virtual_memory().available, requested_workers=n_workers)
        if plan is not None and plan.note:
            warnings.warn(plan.note, stacklevel=2)
        client = _Client(scheduler, plan, out)
        description = client.description
        try:
            finished = _run_tasks(client.client, todo, out, config_dict, outputs, phase_sign, progress, on_record,
                                  cancel)
        finally:
            client.close()
        records.update((r["name"], r) for r in finished)
    ordered = [records[a.name] for a in acquisitions]
    summary = CohortSummary(out, ordered, files, description)
    summary.files.update(write_reports(summary, config_dict, config_name=str(config or "consensus")))
    return summary


def _write_description(out: Path, bids_root: Path) -> Path:
    description = dataset_description(
        "QSMLib quantitative susceptibility maps", "derivative",
        generated_by=[{"Name": "QSMLib", "Version": __version__, "CodeURL": "https://github.com/SlicerQSM/SlicerQSM",
                       "Description": "qsm bids: multi-echo GRE -> susceptibility (ppm), field maps, masks"}],
        source_datasets=[{"URL": bids_root.as_uri()}],
    )
    description["DatasetLinks"] = {"raw": bids_root.as_uri()}
    return write_json_atomic(out / "dataset_description.json", description)


def write_reports(summary: CohortSummary, config: Mapping[str, Any], *, config_name: str) -> dict[str, Path]:
    """Group ROI table, summary JSON, methods paragraph and HTML index of a cohort run."""
    from .report import cohort_index_html, methods_markdown

    out = summary.out_dir
    good = [r for r in summary.records if r["status"] != "failed"]
    rows = [{"participant_id": f"sub-{r['subject']}", "session_id": f"ses-{r['session']}" if r["session"] else "n/a",
             "acquisition": r["name"], **row} for r in good for row in r["roi"]]
    columns = ["participant_id", "session_id", "acquisition", *ROI_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    files = {"group_table": write_text_atomic(out / GROUP_TABLE, buffer.getvalue())}

    files["summary"] = write_json_atomic(out / SUMMARY_FILE, {
        "QSMLib": __version__, "cluster": summary.cluster, "config": dict(config),
        "counts": {s: summary.count(s) for s in ("processed", "skipped", "failed")},
        "acquisitions": [{k: v for k, v in r.items() if k != "roi"} for r in summary.records],
    })
    provenances = [json.loads((out / r["outputs"]["provenance"]).read_text()) for r in good]
    software = provenances[0]["software"] if provenances else {"QSMLib": __version__}
    consensus = dict(config) == PRESETS["consensus"]().to_dict()
    files["methods"] = write_text_atomic(out / METHODS_FILE, methods_markdown(
        dict(config), software, stages_used={s for p in provenances for s in p.get("timings_s", {})},
        n_acquisitions=len(good), echo_counts=[len(p["inputs"]["echo_times_s"]) for p in provenances],
        field_strengths_t=[p["inputs"]["b0_tesla"] for p in provenances], consensus=consensus,
        configuration=f"the `{config_name}` preset" if config_name in PRESETS else f"the file `{config_name}`",
    ))
    links = [("methods", METHODS_FILE), ("group ROI table", GROUP_TABLE), ("summary", SUMMARY_FILE),
             ("dataset description", "dataset_description.json")]
    files["index"] = write_text_atomic(out / INDEX_FILE, cohort_index_html(
        summary.records, title=f"QSM cohort: {out.name}", links=links))
    return files
