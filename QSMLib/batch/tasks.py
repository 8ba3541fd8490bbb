"""One cohort task: reconstruct an acquisition into the derivatives folder, or recognise it as done."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .. import run
from .._threads import available_cores, limit_threads
from ..errors import QSMInputError
from ..io.bids import sidecar_path, write_json_atomic
from ..io.files import file_checksum
from ..io.nifti import read_volume
from ..io.results import MAP_FILES, write_outputs
from ..pipeline import PipelineConfig
from ..report import reconstruction_qc, write_png
from ..roi import COLUMNS as ROI_COLUMNS
from .layout import ALWAYS, ATLAS_OUTPUTS, DERIVATIVES, WORK_FOLDER, Acquisition, PathLike, Record, empty_record


def task_signature(acquisition: Acquisition, config: Mapping[str, Any], outputs: Sequence[str],
                   phase_sign: int, rois: Optional[str] = None, bipolar: Optional[bool] = None) -> dict[str, Any]:
    """Everything an acquisition's derivatives depend on, as JSON-ready data.

    The configuration (but its ``threads`` and ``device``, which change the
    speed, not the results beyond float32 rounding), the requested outputs, the phase sign, the automatic ROIs asked
    for (``rois``) and the readout (``bipolar``), each only when given (older signatures stay valid), and the SHA-256 of
    every input (images in echo order, their sidecars, label map and
    names), as a list because the order of the echoes matters.
    """
    inputs = [*acquisition.magnitude, *acquisition.phase]
    inputs += [str(sidecar_path(Path(p))) for p in inputs]
    inputs += [p for p in (acquisition.labels, acquisition.label_names) if p]
    signature = {
        "config": {key: value for key, value in config.items() if key not in ("threads", "device")},
        "outputs": sorted(outputs), "phase_sign": int(phase_sign),
        "inputs": [[Path(p).name, file_checksum(p) if Path(p).is_file() else None] for p in inputs],
    }
    if rois:
        signature["rois"] = rois
    if bipolar is not None:
        signature["readout"] = "bipolar" if bipolar else "monopolar"
    return json.loads(json.dumps(signature))


def process_acquisition(acquisition: Acquisition, out_dir: str, config: Mapping[str, Any],
                        outputs: Sequence[str] = (), phase_sign: int = 1, rois: Optional[str] = None,
                        bipolar: Optional[bool] = None) -> Record:
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
    rois : {None, "atlas"}
        Automatic ROIs, as ``qsm run --rois``.
    bipolar : bool, optional
        The readout, as ``qsm run --bipolar`` (True) / ``--monopolar``
        (False); None: told from the echoes.

    Returns
    -------
    Record
        ``status`` ``processed`` with the outputs, or ``failed`` with the
        reason; a failure of this acquisition never raises, so it cannot
        stop the other tasks.
    """
    began = time.perf_counter()
    record: Record = empty_record(acquisition)
    anat = Path(out_dir) / acquisition.anat_dir
    work_root = Path(out_dir) / WORK_FOLDER
    try:
        # A rerun must never trust a set that this run is about to replace, and a killed run's
        # private folder is garbage: both go before any work.
        (Path(out_dir) / acquisition.output_path("provenance")).unlink(missing_ok=True)
        for stale in work_root.glob(f"{acquisition.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        with warnings.catch_warnings(record=True) as caught, limit_threads(_task_threads(config)):
            warnings.simplefilter("always")
            record.update(_reconstruct(acquisition, Path(out_dir), work_root, config, outputs, phase_sign, rois,
                                       bipolar))
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


def _task_threads(config: Mapping[str, Any]) -> int:
    """The configuration's ``threads``; when 0, the cores shared out among the Dask worker's task slots."""
    threads = int(config.get("threads") or 0)
    if threads:
        return threads
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker: every core
        return 0
    return max(1, available_cores() // max(int(slots), 1))


def _unreadable_input(acquisition: Acquisition, error: BaseException) -> str:
    """Name the input file that cannot be read (only looked for once reading has failed)."""
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


def _reconstruct(acquisition: Acquisition, out_dir: Path, work_root: Path, config: Mapping[str, Any],
                 outputs: Sequence[str], phase_sign: int, rois: Optional[str], bipolar: Optional[bool]) -> Record:
    # QSMLib.run is the path `qsm run` takes too, so that a cohort task and `qsm run` give the same files.
    signature = task_signature(acquisition, config, outputs, phase_sign, rois, bipolar)
    inputs = run.read_acquisition(acquisition.magnitude, acquisition.phase, phase_sign=phase_sign, bipolar=bipolar,
                                  labels=acquisition.labels, label_names=acquisition.label_names)
    run.check_rois(rois, inputs)
    loaded = inputs.acquisition
    result = run.reconstruct(inputs, PipelineConfig.from_dict(dict(config)), overwrite_phase=True)
    automatic = run.add_atlas_rois(inputs, result) if rois else None
    maps = run.output_maps(result, [o for o in outputs if o in MAP_FILES])
    for key in ("r2star", "t2star"):
        if key in outputs or key in result.maps:
            if key not in result.maps:
                raise QSMInputError(f"{key} was requested but the configuration computes no R2*/T2* maps: "
                                    'set {"relaxometry": {"method": "arlo"}} (or "loglinear") in --config.')
            maps[key] = result.maps[key]
    roi_files: dict[str, bytes] = {}
    if automatic is not None:
        roi_maps, roi_files = run.atlas_outputs(automatic, result, inputs)
        maps.update(roi_maps)
    sources = [f"bids:raw:{(acquisition.anat_dir / Path(p).name).as_posix()}"
               for p in (*acquisition.magnitude, *acquisition.phase)]
    sidecars = {f"sidecar-{key}.json": json.dumps({**DERIVATIVES[key][3], "Sources": sources}, indent=2).encode()
                for key in maps}
    provenance = result.provenance({**inputs.provenance, "command": "qsm bids", "acquisition": acquisition.name})
    if automatic is not None:
        provenance["rois"] = automatic.provenance()
    # Written outside the subject's folders, which appear only when the files are published.
    work_root.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{acquisition.name}-", dir=work_root))
    try:
        written = write_outputs(work, maps, loaded.affine, roi_rows=result.roi if result.roi else None,
                                provenance=provenance, extra_files={**sidecars, **roi_files})
        montage = reconstruction_qc(result, loaded, name=acquisition.name, mask_outline=True)
        written["qc"] = write_png(work / "qc.png", montage)
        if automatic is not None:
            written["rois_table"] = written[run.ATLAS_FILES["rois_table"]]
            written["rois_qc"] = written[run.ATLAS_FILES["rois_qc"]]
        published = _publish(acquisition, out_dir, written, signature, sorted(maps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"outputs": published, "qc": published.get("qc"), "roi": result.roi, "reason": None}


def _publish(acquisition: Acquisition, out_dir: Path, written: Mapping[str, Path], signature: dict[str, Any],
             map_keys: Sequence[str]) -> dict[str, str]:
    """Move the finished files into place, then write the provenance file that vouches for them."""
    targets: dict[str, Path] = {key: acquisition.output_path(key) for key in (*map_keys, "qc")}
    for key in ("roi_stats", "rois_table", "rois_qc"):
        if key in written:
            targets[key] = acquisition.output_path(key)
    moves = [(written[key], target) for key, target in targets.items()]
    moves += [(written[f"sidecar-{key}.json"], targets[key].with_name(targets[key].name[:-7] + ".json"))
              for key in map_keys]
    checksums: dict[str, str] = {}
    for source, target in moves:
        (out_dir / target).parent.mkdir(parents=True, exist_ok=True)
        checksums[target.as_posix()] = file_checksum(source)
        os.replace(source, out_dir / target)
    provenance = json.loads(Path(written["provenance"]).read_text())
    del provenance["outputs"]  # names in the private folder; the published paths follow
    provenance["derivatives"] = {"acquisition": acquisition.name, "signature": signature, "outputs": checksums}
    write_json_atomic(out_dir / acquisition.output_path("provenance"), provenance)
    published = {key: target.as_posix() for key, target in targets.items()}
    published["provenance"] = acquisition.output_path("provenance").as_posix()
    return published


def completed_record(acquisition: Acquisition, out_dir: PathLike, config: Mapping[str, Any],
                     outputs: Sequence[str], phase_sign: int, rois: Optional[str] = None,
                     bipolar: Optional[bool] = None) -> Optional[Record]:
    """The record of an acquisition whose derivatives are complete and valid, else None.

    Complete and valid: the provenance file exists, its signature (config,
    outputs, phase sign, input checksums) equals this run's, and every output
    it lists exists with the listed SHA-256 (``rois``, ``bipolar``: as :func:`process_acquisition`).
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
    if derivatives.get("signature") != task_signature(acquisition, config, outputs, phase_sign, rois, bipolar):
        return None
    expected = {acquisition.output_path(key).as_posix()
                for key in (*ALWAYS, *outputs, "qc", *(ATLAS_OUTPUTS if rois else ()))}
    if acquisition.labels or rois:
        expected.add(acquisition.output_path("roi_stats").as_posix())
    if not expected <= set(listed):
        return None
    for relative, digest in listed.items():
        if not (out_dir / relative).is_file() or file_checksum(out_dir / relative) != digest:
            return None
    record = empty_record(acquisition)
    by_path = {acquisition.output_path(key).as_posix(): key for key in (*DERIVATIVES, "qc", "rois_qc")}
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
