"""Running the tasks on Dask: a local cluster sized by memory, or an existing scheduler."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._threads import blas_environment
from .._version import __version__
from ..errors import QSMInputError
from .layout import MISSING_DASK, Acquisition, Record, empty_record
from .tasks import process_acquisition


@dataclass(frozen=True)
class ClusterPlan:
    """Size of a local Dask cluster: one single-threaded worker per concurrent task.

    A worker runs one task at a time (one Dask thread), so its memory limit
    bounds one task; inside, the task's FFTs, BLAS and file I/O use
    ``threads_per_task`` threads, and ``n_workers * threads_per_task`` stays
    within the cores unless the user asked for more.
    """

    n_workers: int
    memory_limit_bytes: int
    note: str = ""
    threads_per_task: int = 1


def plan_local_cluster(task_bytes: int, n_tasks: int, *, cpu_count: int, available_bytes: int,
                       requested_workers: Optional[int] = None, requested_threads: int = 0) -> ClusterPlan:
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
        ``--workers`` (default ``cpu_count // requested_threads``, or
        ``cpu_count``); fewer, with a note, when that many would not fit in
        memory.
    requested_threads : int
        ``--threads`` per task (0: ``cpu_count // workers``, at least 1); fewer,
        with a note, when ``requested_workers`` times it exceeds the cores.

    Returns
    -------
    ClusterPlan
        Workers, each one's memory limit (the usable memory shared out, at
        least ``task_bytes``) and the threads of each task.

    Examples
    --------
    >>> plan = plan_local_cluster(2**30, 10, cpu_count=8, available_bytes=64 * 2**30, requested_threads=2)
    >>> plan.n_workers, plan.threads_per_task
    (4, 2)
    """
    usable = int(available_bytes * 0.9)
    fit = max(1, usable // max(task_bytes, 1))
    wanted = requested_workers or max(1, cpu_count // requested_threads if requested_threads else cpu_count)
    n_workers = max(1, min(wanted, n_tasks, fit))
    # Tasks that leave cores idle (few tasks, or few fit in memory) use more threads each.
    threads = requested_threads or max(1, cpu_count // n_workers)
    gib = 2.0**30
    notes = []
    if task_bytes > usable:
        notes.append(f"one task needs about {task_bytes / gib:.1f} GiB but only {usable / gib:.1f} GiB are free: "
                     "it may run out of memory.")
    elif n_workers < min(wanted, n_tasks):
        notes.append(f"workers reduced from {min(wanted, n_tasks)} to {n_workers}: each task needs about "
                     f"{task_bytes / gib:.1f} GiB and {usable / gib:.1f} GiB are free.")
    if n_workers * threads > cpu_count and threads > 1:
        fewer = max(1, cpu_count // n_workers)
        notes.append(f"threads per task reduced from {threads} to {fewer}: {n_workers} workers x {threads} "
                     f"threads would oversubscribe the {cpu_count} cores.")
        threads = fewer
    return ClusterPlan(n_workers, max(task_bytes, usable // n_workers), " ".join(notes), threads)


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise QSMInputError(MISSING_DASK) from None
    return distributed


def _worker_environment(out_dir: str) -> tuple[str, bool]:
    """QSMLib's version on a worker and whether it sees the output folder (run on every worker)."""
    return __version__, os.path.isdir(out_dir)


#: Address forms a Dask client connects to: ``[protocol://]host:port`` (IPv6 hosts in brackets).
_SCHEDULER_ADDRESS = re.compile(r"^(?:(?P<protocol>tcp|tls|ws|wss|ucx)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|"
                                r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")
#: Seconds to wait for a TCP connection to the scheduler before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


def check_scheduler_address(address: str) -> tuple[str, int]:
    """Host and port of a Dask scheduler address, or :class:`QSMInputError` saying how to write one.

    Examples
    --------
    >>> check_scheduler_address("tcp://node1:8786")
    ('node1', 8786)
    """
    match = _SCHEDULER_ADDRESS.match(address.strip())
    port = int(match.group("port")) if match else 0
    if match is None or not 0 < port < 65536:
        hint = (f" (with its port: tcp://{address.strip()}:8786 if the scheduler listens on Dask's default port)"
                if re.fullmatch(r"[A-Za-z0-9.-]+", address.strip()) else "")
        raise QSMInputError(f"--scheduler {address!r} is not a Dask scheduler address: give it as tcp://HOST:PORT"
                            f"{hint}, as `dask scheduler` prints it, e.g. tcp://node1:8786.")
    return match.group("host").strip("[]"), port


class Client:
    """A Dask client on a new local cluster or an existing scheduler; closes what it started.

    Connecting writes nothing; :meth:`check_workers` then checks that the
    workers run this QSMLib and see the (existing) output folder.
    """

    def __init__(self, scheduler: Optional[str], plan: Optional[ClusterPlan]):
        distributed = import_distributed()
        self.cluster = None
        if scheduler is not None:
            host, port = check_scheduler_address(scheduler)
            try:
                if not scheduler.startswith("ucx://"):  # fail in seconds, not after the client's timeout
                    socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
                self.client = distributed.Client(scheduler, timeout="20s", set_as_default=False)
            except (OSError, TimeoutError, ValueError) as error:
                reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
                raise QSMInputError(f"Cannot reach the Dask scheduler at {scheduler} ({reason}). Start one with "
                                    "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out "
                                    "--scheduler to use this machine.") from None
            self.description = f"Dask scheduler {scheduler}"
        else:
            assert plan is not None
            self.cluster = distributed.LocalCluster(
                n_workers=plan.n_workers, threads_per_worker=1, memory_limit=plan.memory_limit_bytes,
                processes=True, dashboard_address=None, silence_logs=logging.ERROR,
                env=blas_environment(plan.threads_per_task),
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.description = (f"local Dask cluster: {plan.n_workers} worker(s), "
                                f"{plan.memory_limit_bytes / 2**30:.1f} GiB and {plan.threads_per_task} "
                                f"thread(s) per task")
        self.scheduler = scheduler

    def check_workers(self, out_dir: Path) -> None:
        """Refuse workers that are missing, run another QSMLib, or cannot see ``out_dir``."""
        try:
            self.client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise QSMInputError(f"The Dask scheduler {self.scheduler} has no workers: start some with "
                                f"`dask worker {self.scheduler}`.") from None
        try:
            environments = self.client.run(_worker_environment, str(out_dir))
        except ImportError as error:
            raise QSMInputError(f"The Dask workers cannot import QSMLib ({error}): install the same qsmlib in "
                                "the workers' environment.") from None
        wrong = {w: v for w, (v, _) in environments.items() if v != __version__}
        if wrong:
            raise QSMInputError(f"Dask workers run other QSMLib versions ({wrong}) than this one ({__version__}): "
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


def run_tasks(client: Any, acquisitions: Sequence[Acquisition], out_dir: Path, config: Mapping[str, Any],
               outputs: Sequence[str], phase_sign: int, progress: ProgressCallback,
               on_record: Optional[Callable[[Record], None]], cancel: CancelToken,
               rois: Optional[str] = None, bipolar: Optional[bool] = None) -> list[Record]:
    """Submit one task per acquisition and collect the records as they finish."""
    run_id = uuid.uuid4().hex[:8]
    futures = {
        client.submit(process_acquisition, acquisition, str(out_dir), dict(config), tuple(outputs), phase_sign,
                      rois, bipolar, key=f"qsm-{acquisition.name}-{run_id}", pure=False): acquisition
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
                records.append(_future_record(future, futures[future], config))
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


def _future_record(future: Any, acquisition: Acquisition, config: Mapping[str, Any]) -> Record:
    """A task's record, or a failure record when the task itself could not run or return."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: reported for this acquisition only
        record = empty_record(acquisition)
        gib = acquisition.memory_bytes(config["zero_fill_mm"], config["inversion"]["method"]) / 2**30
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
