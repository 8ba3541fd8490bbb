"""Time ``qsm run`` on a realistic head: per stage, outside the stages, CPU, peak memory, profile.

    python benchmarks/bench_pipeline.py [--config consensus] [--echoes 9] [--voxel-size 1.0] [--bipolar]
        [--threads N] [--device cpu|cuda|auto] [--compress fast|best|none] [--inputs DIR] [--repeat 1]
        [--profile-top 25] [--outputs DIR]

The head phantom (256 x 256 x 176 voxels at 1 mm, 9 echoes by default) is
simulated and written as 4D float32 magnitude and phase ``.nii.gz`` files with
BIDS sidecars (echo times, field strength), as a user's data would come (``--bipolar``: the
even echoes carry a bipolar readout's phase error, as in the seed's 9-echo protocol, and ``qsm
run`` is not told, so it detects and corrects it); with
``--inputs DIR`` they are kept in DIR and reused by later runs (``--outputs DIR`` keeps each run's
outputs in ``DIR/run1``, ``DIR/run2``..., e.g. to compare ``--device cuda`` with the CPU). Then ``qsm run``
(``QSMLib.cli.console_main``, the very code path of the command) runs on them in a
fresh child process, which reports for itself:

- wall and CPU time (all threads) of every segment: start-up (imports),
  reading the inputs (before the first stage), each pipeline stage, writing
  the outputs (after the last stage); "outside the stages" is start-up +
  reading + writing;
- peak resident memory of the child alone (``VmHWM``: the parent that
  simulated the phantom is not included) and the highest resident memory
  sampled every 10 ms within each segment;
- a cProfile of the run (the slowest functions by cumulative time and by
  own time; ``--profile-top 0`` runs without the profiler, whose overhead
  is a few per cent). cProfile sees the main thread only: work that QSMLib
  hands to its threads (reading files, slab-parallel stages, writing) shows
  there as waiting (``acquire``), and is in the segments' CPU times.

Stage boundaries come from the progress events ``qsm run --progress json``
emits. The machine's load average before and after is printed, because wall
times on a shared machine depend on it; CPU times much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD_STARTED = (time.perf_counter(), time.process_time())
REPO = Path(__file__).resolve().parent.parent


def _status_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, GiB (``getrusage`` would inherit the parent's)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


class _Recorder:
    """Stands in for ``sys.stdout`` in the child: timestamps the JSON progress events of ``qsm run``.

    A sampling thread records the resident memory every 10 ms against the
    segment (``reading``, a stage name, ``writing``) running at that moment.
    """

    def __init__(self) -> None:
        import threading

        self.segment = "reading"
        self.marks: list[tuple[str, float, float]] = [("reading", time.perf_counter(), time.process_time())]
        self.peak_gib: dict[str, float] = {}
        self.events: list[dict] = []
        self._buffer = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        page_gib = os.sysconf("SC_PAGE_SIZE") / 1024**3
        with open("/proc/self/statm") as statm:
            while not self._stop.wait(0.01):
                statm.seek(0)
                rss = int(statm.read().split()[1]) * page_gib
                self.peak_gib[self.segment] = max(self.peak_gib.get(self.segment, 0.0), rss)

    def _enter(self, segment: str) -> None:
        if segment != self.segment:
            self.segment = segment
            self.marks.append((segment, time.perf_counter(), time.process_time()))

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            event = json.loads(line)
            self.events.append(event)
            if event.get("event") == "progress" and event.get("stage"):
                self._enter("writing" if event["stage"] == "done" else event["stage"])
        return len(text)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        self._enter("end")
        self._stop.set()
        self._thread.join()


def _child(options: dict) -> None:
    import cProfile
    import io
    import pstats

    from QSMLib import cli

    imported = (time.perf_counter(), time.process_time())
    argv = ["run", "--mag", options["magnitude"], "--phase", options["phase"], "--config", options["config"],
            "--out", options["out"], "--progress", "json", *options["extra"]]
    recorder = _Recorder()
    profiler = cProfile.Profile() if options["profile_top"] else None
    stdout = sys.stdout
    sys.stdout = recorder
    try:
        if profiler is not None:
            profiler.enable()
        code = cli.console_main(argv)
        if profiler is not None:
            profiler.disable()
    finally:
        sys.stdout = stdout
        recorder.finish()
    if code != 0:
        raise SystemExit(f"qsm run failed with exit code {code}: {recorder.events[-3:]}")
    segments = [{"name": "start-up", "wall_s": imported[0] - _CHILD_STARTED[0],
                 "cpu_s": imported[1] - _CHILD_STARTED[1], "peak_gib": None}]
    for (name, wall, cpu), (_, next_wall, next_cpu) in zip(recorder.marks, recorder.marks[1:]):
        segments.append({"name": name, "wall_s": next_wall - wall, "cpu_s": next_cpu - cpu,
                         "peak_gib": recorder.peak_gib.get(name)})
    profile_text = ""
    if profiler is not None:
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        for order in ("cumulative", "tottime"):
            stats.sort_stats(order).print_stats(options["profile_top"])
        profile_text = stream.getvalue()
    provenance = json.loads((Path(options["out"]) / "provenance.json").read_text())
    print(json.dumps({
        "segments": segments, "peak_gib": _status_gib("VmHWM"),
        "cpu_total_s": time.process_time() - _CHILD_STARTED[1], "wall_total_s": time.perf_counter() - _CHILD_STARTED[0],
        "warnings": [e["message"] for e in recorder.events if e.get("event") == "warning"],
        "stage_timings_s": provenance.get("timings_s", {}), "profile": profile_text,
    }))


def _write_inputs(folder: Path, echoes: int, voxel_size_mm: float, bipolar: bool) -> float:
    """Simulate the head and write 4D magnitude/phase NIfTI with sidecars; returns the simulation seconds."""
    import numpy as np
    import SimpleITK as sitk

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _head import realistic_head

    from QSMLib.io.nifti import image_from_array

    phantom, simulate_s = realistic_head(echoes, voxel_size_mm, bipolar)
    acquisition = phantom.acquisition
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("magnitude", acquisition.magnitude), ("phase", acquisition.phase)):
        series = sitk.JoinSeries([image_from_array(np.asarray(v, np.float32), acquisition.affine) for v in data])
        sitk.WriteImage(series, str(folder / f"{name}.nii.gz"), True)
        (folder / f"{name}.json").write_text(json.dumps(
            {"EchoTime": list(acquisition.echo_times_s), "MagneticFieldStrength": acquisition.b0_tesla}))
    (folder / "bench.json").write_text(json.dumps({"echoes": echoes, "voxel_size_mm": voxel_size_mm,
                                                   "bipolar": bipolar, "shape": list(acquisition.spatial_shape)}))
    return simulate_s


def _shorten(text: str) -> str:
    """Profile lines with the repository and site-packages prefixes cut."""
    for prefix in sorted({str(REPO) + "/", *(p + "/" for p in sys.path if "site-packages" in p)}, key=len,
                         reverse=True):
        text = text.replace(prefix, "")
    return "\n".join(line for line in text.splitlines() if line.strip() and "function calls" not in line
                     and not line.startswith(("Ordered by", "   List reduced", "   Random")))


def _run_child(options: dict) -> tuple[dict, float, float]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    began = time.perf_counter()
    completed = subprocess.run([sys.executable, __file__, "--child", json.dumps(options)], cwd=REPO,
                               capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - began
    if completed.returncode != 0:
        raise SystemExit(f"the child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), wall, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="consensus", help="preset or JSON configuration (default consensus)")
    parser.add_argument("--echoes", type=int, default=9)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--bipolar", action="store_true",
                        help="simulate a bipolar readout (qsm run is not told: it detects and corrects it)")
    parser.add_argument("--threads", type=int, help="qsm run --threads (default: qsm run's default)")
    parser.add_argument("--device", help="qsm run --device (default: qsm run's default, cpu)")
    parser.add_argument("--compress", help="qsm run --compress (default: qsm run's default)")
    parser.add_argument("--inputs", help="folder for the simulated input files (kept and reused)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the table is the fastest one's")
    parser.add_argument("--profile-top", type=int, default=25, help="profile lines per ordering (0: no profiler)")
    parser.add_argument("--outputs", help="folder to keep each run's outputs in (run1, run2...; default: deleted)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(args.inputs) if args.inputs else Path(scratch) / "inputs"
        wanted = {"echoes": args.echoes, "voxel_size_mm": args.voxel_size, "bipolar": args.bipolar}
        cached = json.loads((inputs / "bench.json").read_text()) if (inputs / "bench.json").is_file() else {}
        if {k: cached.get(k) for k in wanted} != wanted:
            print(f"simulating the head and writing {inputs} ...", flush=True)
            print(f"  phantom simulation {_write_inputs(inputs, args.echoes, args.voxel_size, args.bipolar):.1f} s "
                  "(not part of the pipeline)", flush=True)
            cached = json.loads((inputs / "bench.json").read_text())
        extra = [*(["--threads", str(args.threads)] if args.threads is not None else []),
                 *(["--device", args.device] if args.device else []),
                 *(["--compress", args.compress] if args.compress else [])]
        runs = []
        for repeat in range(args.repeat):
            options = {"magnitude": str(inputs / "magnitude.nii.gz"), "phase": str(inputs / "phase.nii.gz"),
                       "config": args.config, "out": str(Path(args.outputs or scratch) / f"run{repeat + 1}"),
                       "extra": extra,
                       "profile_top": args.profile_top}
            load_before = os.getloadavg()[0]
            report, wall, load_after = _run_child(options)
            runs.append((wall, report, load_before, load_after))
            print(f"run {repeat + 1}: wall {wall:.1f} s, CPU {report['cpu_total_s']:.1f} s, peak RSS "
                  f"{report['peak_gib']:.2f} GiB (load average {load_before:.1f} before, {load_after:.1f} after)",
                  flush=True)
    wall, report, load_before, load_after = min(runs, key=lambda run: run[0])
    shape = "x".join(str(n) for n in cached["shape"])
    print(f"\nqsm run --config {args.config} {' '.join(extra)}".rstrip()
          + f" on a {shape} head at {args.voxel_size} mm, {args.echoes} echoes"
          + (", bipolar readout (detected)" if args.bipolar else "") + f"; {os.cpu_count()} cores, "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    from QSMLib.io.nifti import GZIP_READER  # what the child used too: the same environment

    print(f"gzip reader: {GZIP_READER} (ISA-L with the fast-io extra, else zlib)")
    print(f"child process: wall {wall:.1f} s (interpreter start included), CPU {report['cpu_total_s']:.1f} s, "
          f"peak RSS {report['peak_gib']:.2f} GiB (the child alone)")
    print(f"\n  {'segment':<16} {'wall s':>7} {'CPU s':>7} {'peak RSS GiB':>13}")
    outside = [0.0, 0.0]
    stages = [0.0, 0.0]
    for segment in report["segments"]:
        peak = "" if segment["peak_gib"] is None else f"{segment['peak_gib']:.2f}"
        in_stage = segment["name"] not in ("start-up", "reading", "writing")
        name = ("  " if in_stage else "") + segment["name"]
        print(f"  {name:<16} {segment['wall_s']:7.1f} {segment['cpu_s']:7.1f} {peak:>13}")
        totals = stages if in_stage else outside
        totals[0] += segment["wall_s"]
        totals[1] += segment["cpu_s"]
    print(f"  {'stages':<16} {stages[0]:7.1f} {stages[1]:7.1f}")
    print(f"  {'outside stages':<16} {outside[0]:7.1f} {outside[1]:7.1f}")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
    if report["profile"]:
        print("\nprofile (cProfile of the main thread, seconds of wall time; by cumulative time, then by own "
              "time; 'acquire' is waiting for QSMLib's worker threads):")
        print(_shorten(report["profile"]))


if __name__ == "__main__":
    main()
