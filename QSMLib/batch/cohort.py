"""``run_cohort``: a BIDS dataset in, a BIDS derivatives dataset out."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .._backend import check_device, resolve_device
from .._progress import CancelToken, ProgressCallback
from .._threads import available_cores, check_thread_count
from .._version import __version__
from ..errors import QSMInputError, QSMWarning
from ..io.bids import dataset_description, write_json_atomic
from ..io.results import check_output_folder
from ..pipeline import load_config
from ..rois import check_atlas_available
from ..run import ROI_SOURCES
from .discovery import find_acquisitions
from .layout import OPTIONAL, WORK_FOLDER, Acquisition, CohortSummary, PathLike, Record, empty_record
from .reports import write_reports
from .scheduling import Client, check_scheduler_address, import_distributed, plan_local_cluster, run_tasks
from .tasks import completed_record


def run_cohort(
    bids_root: PathLike,
    out_dir: PathLike,
    *,
    participant_labels: Optional[Sequence[str]] = None,
    config: Union[str, Path, None] = None,
    outputs: Sequence[str] = (),
    labels_dir: Optional[PathLike] = None,
    rois: Optional[str] = None,
    phase_sign: int = 1,
    bipolar: Optional[bool] = None,
    scheduler: Optional[str] = None,
    n_workers: Optional[int] = None,
    overwrite: bool = False,
    threads: Optional[int] = None,
    device: Optional[str] = None,
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
    rois : {None, "atlas"}
        Automatic ROIs for every acquisition instead (``qsm run --rois``).
    phase_sign : {1, -1}
        Phase handedness of the whole dataset.
    bipolar : bool, optional
        The whole dataset's readout: True bipolar, False monopolar; None
        (default) lets each acquisition's echoes tell (see
        :func:`QSMLib.pipeline.run_pipeline`).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); default:
        a local cluster sized by :func:`plan_local_cluster`.
    n_workers : int, optional
        Local cluster workers (default: cores, limited by memory).
    overwrite : bool
        Redo acquisitions whose derivatives are already complete.
    threads : int, optional
        Threads of each task (FFTs, BLAS, file I/O); default the
        configuration's ``threads``, and when that is 0, cores / workers on
        a local cluster (workers x threads <= cores), or cores / the worker's
        Dask threads on an existing scheduler.
    device : {None, "cpu", "cuda", "auto"}
        Where the solvers with a GPU path run (see
        :class:`~QSMLib.pipeline.PipelineConfig`); default the
        configuration's ``device``. On a local cluster a missing GPU is
        reported before anything is written; on an existing scheduler the
        workers' GPUs count, so each task checks its own.
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
    out = Path(out_dir).resolve()
    if scheduler is not None and n_workers is not None:
        raise QSMInputError("Give either --scheduler (an existing Dask cluster) or --workers (a local one), not both.")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    if n_workers is not None and n_workers < 1:
        raise QSMInputError(f"--workers must be at least 1, got {n_workers}.")
    if phase_sign not in (1, -1):
        raise QSMInputError(f"The phase sign must be +1 or -1, got {phase_sign}.")
    if bipolar not in (None, True, False):
        raise QSMInputError(f"bipolar must be True, False or None (detected per acquisition), got {bipolar!r}.")
    unknown = sorted(set(outputs) - set(OPTIONAL))
    if unknown:
        raise QSMInputError(f"Unknown output(s) {unknown}; choose from {', '.join(OPTIONAL)}.")
    if rois:
        if rois not in ROI_SOURCES:
            raise QSMInputError(f"Unknown ROI source {rois!r}; choose from {', '.join(ROI_SOURCES)}.")
        if labels_dir:
            raise QSMInputError("Give either label maps (--labels) or automatic ROIs (--rois atlas), not both.")
        check_atlas_available()
    config_dict = load_config(config).to_dict()
    if threads is not None:
        config_dict["threads"] = check_thread_count(threads)
    if device is not None:
        config_dict["device"] = check_device(device)
    if scheduler is None:
        resolve_device(config_dict["device"])
    import_distributed()
    acquisitions = find_acquisitions(bids_root, participant_labels, labels_dir)
    root = Path(bids_root).resolve()
    if out == root:
        raise QSMInputError("The output folder is the BIDS dataset itself: write the derivatives to their own "
                            "folder, e.g. BIDS_ROOT/derivatives/qsm.")
    if not (root / "dataset_description.json").is_file():
        warnings.warn(f"{root} has no dataset_description.json: is it the root of a BIDS dataset? Processing the "
                      "sub-* folders found there.", QSMWarning, stacklevel=2)
    check_output_folder(out, [], overwrite=True)

    records: dict[str, Record] = {}
    todo: list[Acquisition] = []
    for acquisition in acquisitions:
        done = None if overwrite else completed_record(acquisition, out, config_dict, outputs, phase_sign, rois,
                                                        bipolar)
        if acquisition.problem:
            records[acquisition.name] = empty_record(acquisition)
        elif done is not None:
            records[acquisition.name] = done
        else:
            todo.append(acquisition)
    description = "none (every acquisition complete or unusable)"
    client = None
    if todo:
        plan = None
        if scheduler is None:
            import psutil

            task_bytes = max(a.memory_bytes(config_dict["zero_fill_mm"], config_dict["inversion"]["method"])
                             for a in todo)
            plan = plan_local_cluster(task_bytes, len(todo), cpu_count=available_cores(),
                                      available_bytes=psutil.virtual_memory().available, requested_workers=n_workers,
                                      requested_threads=config_dict["threads"])
        if plan is not None:
            config_dict["threads"] = plan.threads_per_task
            if plan.note:
                warnings.warn(plan.note, stacklevel=2)
        # Nothing is written before the cluster answers: an unreachable scheduler leaves no trace.
        client = Client(scheduler, plan)
        description = client.description
    try:
        files = _start_derivatives(out, root, client)
        for record in records.values():
            if on_record is not None:
                on_record(record)
        if client is not None:
            finished = run_tasks(client.client, todo, out, config_dict, outputs, phase_sign, progress, on_record,
                                 cancel, rois, bipolar)
            records.update((r["name"], r) for r in finished)
    finally:
        if client is not None:
            client.close()
        _remove_empty_work_folder(out)
    ordered = [records[a.name] for a in acquisitions]
    summary = CohortSummary(out, ordered, files, description)
    summary.files.update(write_reports(summary, config_dict, config_name=str(config or "consensus")))
    return summary


def _start_derivatives(out: Path, bids_root: Path, client: Optional[Client]) -> dict[str, Path]:
    """Create the derivatives folder and its description; with a cluster, check its workers see it first.

    A folder this call created is removed again when the workers fail the check.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if client is not None:
        try:
            client.check_workers(out)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
    return {"dataset_description": write_description(out, bids_root)}


def _remove_empty_work_folder(out: Path) -> None:
    try:
        (out / WORK_FOLDER).rmdir()
    except OSError:  # absent, or holds the work of a task still being cancelled
        pass


def write_description(out: Path, bids_root: Path) -> Path:
    description = dataset_description(
        "QSMLib quantitative susceptibility maps", "derivative",
        generated_by=[{"Name": "QSMLib", "Version": __version__, "CodeURL": "https://github.com/SlicerQSM/SlicerQSM",
                       "Description": "qsm bids: multi-echo GRE -> susceptibility (ppm), field maps, masks"}],
        source_datasets=[{"URL": bids_root.as_uri()}],
    )
    description["DatasetLinks"] = {"raw": bids_root.as_uri()}
    return write_json_atomic(out / "dataset_description.json", description)
