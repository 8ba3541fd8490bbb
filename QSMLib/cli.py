"""The ``qsm`` command: ``qsm demo``, ``qsm run``, ``qsm bids`` and ``qsm dicom2bids``.

Exit codes: 0 success, 2 bad input (one-paragraph message, no traceback),
3 some acquisitions of a cohort (or DICOM series) failed and the others
succeeded, 130 cancelled, 1 internal error.

A reader that goes away (``qsm bids ... | head -1``) does not stop the
work: output to the closed pipe stops quietly, the run finishes, and the
exit code is the run's own (0 when it succeeded).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import run
from ._allocator import keep_freed_memory
from ._backend import DEVICES, resolve_device
from ._progress import sub_progress
from ._threads import check_thread_count, set_threads
from ._version import __version__
from .errors import QSMCancelled, QSMInputError
from .io.results import COMPRESSION_LEVELS, MAP_FILES, check_output_folder, planned_files, write_outputs
from .pipeline import PRESETS, PipelineConfig, load_config, run_pipeline

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
EXIT_SOME_FAILED = 3


class SomeFailed(Exception):
    """Some acquisitions (or DICOM series) failed; the others' outputs were written."""


class ProgressPrinter:
    """Progress for people (a bar on stderr), programs (JSON lines on stdout) or nobody."""

    def __init__(self, mode: str):
        self.mode = mode
        self.last_fraction = -1.0
        self.started = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if self.mode == "json":
            stage = message.split(":")[0] if ":" in message else ""
            self.event("progress", fraction=round(fraction, 4), stage=stage, message=message)
        elif self.mode == "bar" and (fraction - self.last_fraction >= 0.005 or fraction >= 1.0):
            self.last_fraction = fraction
            filled = int(30 * fraction)
            elapsed = time.monotonic() - self.started
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% "
                             f"{elapsed:6.1f}s  {message[:48]:<48}")
            sys.stderr.flush()

    def event(self, kind: str, **fields: Any) -> None:
        """Emit one JSON object per line (json mode only)."""
        if self.mode == "json":
            sys.stdout.write(json.dumps({"event": kind, **fields}) + "\n")
            sys.stdout.flush()

    def chosen(self, parameters: dict[str, Any]) -> None:
        """Report what the stages chose from the data (e.g. the inversion's lambda and its rule)."""
        if not parameters:
            return
        if self.mode == "json":
            self.event("chosen", parameters=parameters)
        elif self.mode == "bar":
            self.finish_line()
            for stage, values in parameters.items():
                text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
                sys.stderr.write(f"{stage} chose: {text}\n")

    def warn(self, message: str) -> None:
        if self.mode == "json":
            self.event("warning", message=message)
        else:
            self.finish_line()
            sys.stderr.write(f"Warning: {message}\n")

    def finish_line(self) -> None:
        if self.mode == "bar" and self.last_fraction >= 0:
            sys.stderr.write("\n")
            self.last_fraction = -1.0


class QuietPipe:
    """A text stream that goes quiet when its reader has gone (a closed pipe) instead of raising.

    The file descriptor is pointed at the null device, so that the
    interpreter's final flush does not complain either.
    """

    def __init__(self, stream: Any):
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self) -> None:
        self.reader_gone = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # not a real file (tests)
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise QSMInputError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="consensus",
                        help=f"preset ({', '.join(PRESETS)}) or a JSON configuration file (default: consensus)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                        help="progress display (default: bar on a terminal, else none)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")


def _add_threads(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"threads for FFTs, BLAS and reading and writing files (default: {default})")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="where background removal (ismv) and inversion (tfi, tv) run: cpu, cuda (a GPU "
                             'through PyTorch or CuPy; pip install "qsmlib[gpu]") or auto (the GPU when there is '
                             "one); default: the configuration's 'device', cpu")


def _add_readout(parser: argparse.ArgumentParser) -> None:
    readout = parser.add_mutually_exclusive_group()
    readout.add_argument("--bipolar", dest="bipolar", action="store_const", const=True,
                         help="even echoes were read out with reversed polarity (default: corrected when they look so)")
    readout.add_argument("--monopolar", dest="bipolar", action="store_const", const=False,
                         help="every echo was read out with the same polarity: never apply the bipolar correction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsm", description="Quantitative susceptibility mapping (QSMLib).")
    parser.add_argument("--version", action="version", version=f"QSMLib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="simulate a head phantom, reconstruct it and report accuracy")
    demo.add_argument("--out", default="qsm_demo", help="output folder (default: ./qsm_demo)")
    demo.add_argument("--voxel-size", type=float, default=1.5, help="phantom voxel size in mm (default 1.5)")
    demo.add_argument("--oblique", type=float, default=0.0,
                      help="head tilt against B0 in degrees, about the left-right axis (default 0)")
    _add_common(demo)
    _add_threads(demo, "the configuration's 'threads'; 0 = every core")
    _add_device(demo)

    run_parser = commands.add_parser("run", help="process one multi-echo GRE acquisition (or a field map)")
    run_parser.add_argument("--mag", nargs="+", metavar="FILE", help="magnitude: one 4D file or one 3D file per echo")
    run_parser.add_argument("--phase", nargs="+", metavar="FILE", help="phase: one 4D file or one 3D file per echo")
    run_parser.add_argument("--total-field", metavar="FILE", help="start from a total field map in Hz (needs --mask)")
    run_parser.add_argument("--local-field", metavar="FILE", help="start from a local field map in Hz (needs --mask)")
    run_parser.add_argument("--te", help="echo times in seconds, comma-separated (default: BIDS sidecars)")
    run_parser.add_argument("--b0", type=float, help="field strength in tesla (default: sidecar ImagingFrequency)")
    run_parser.add_argument("--b0-direction",
                            help="B0 as a unit vector in array axes i,j,k... (default: from the affine)")
    run_parser.add_argument("--mask", metavar="FILE", help="brain mask on the image grid (replaces the automatic mask)")
    run_parser.add_argument("--labels", metavar="FILE", help="label map for ROI statistics (0 = background)")
    run_parser.add_argument("--label-names", metavar="FILE", help="TSV (index, name) or JSON label names")
    run_parser.add_argument("--rois", choices=run.ROI_SOURCES,
                            help="automatic ROIs: 'atlas' registers the AAL3 deep grey matter structures to the "
                                 'magnitude (needs pip install "qsmlib[atlas]"); writes rois.nii.gz, rois.tsv, '
                                 "rois_qc.png and their statistics")
    _add_readout(run_parser)
    run_parser.add_argument("--phase-sign", type=int, choices=(1, -1), default=1, help="phase handedness (GE: -1)")
    run_parser.add_argument("--phase-scale", default="auto",
                            choices=("auto", "radians", "degrees", "integer", "range"),
                            help="how the phase file is scaled (default: detect)")
    run_parser.add_argument("--outputs", default="",
                            help=f"extra maps to write, comma-separated: {', '.join(MAP_FILES)}")
    run_parser.add_argument("--out", required=True, help="output folder")
    run_parser.add_argument("--compress", choices=tuple(COMPRESSION_LEVELS), default="fast",
                            help="output maps: gzip fast (default) or best, or none (.nii files, quickest)")
    _add_common(run_parser)
    _add_threads(run_parser, "the configuration's 'threads'; 0 = every core")
    _add_device(run_parser)

    bids = commands.add_parser("bids", help="process every multi-echo GRE run of a BIDS dataset on Dask")
    bids.add_argument("bids_root", help="BIDS dataset root (sub-*/[ses-*/]anat/*_part-{mag,phase}_MEGRE.nii.gz)")
    bids.add_argument("out_dir", help="BIDS derivatives folder (created; finished acquisitions are skipped)")
    bids.add_argument("--participant-label", nargs="+", metavar="LABEL", help="only these subjects (01 or sub-01)")
    bids.add_argument("--labels", metavar="DIR", help="derivatives folder of *_dseg.nii.gz label maps for ROI stats")
    bids.add_argument("--rois", choices=run.ROI_SOURCES,
                      help="automatic ROIs for every acquisition: 'atlas' (AAL3 deep grey matter registered to the "
                           'magnitude; needs pip install "qsmlib[atlas]")')
    bids.add_argument("--outputs", default="", help="extra maps, comma-separated: local_mask, r2star, t2star")
    bids.add_argument("--phase-sign", type=int, choices=(1, -1), default=1, help="phase handedness (GE: -1)")
    _add_readout(bids)
    where = bids.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://node1:8786")
    where.add_argument("--workers", type=int, help="local cluster workers (default: cores, limited by memory)")
    _add_common(bids)
    _add_threads(bids, "per acquisition, the configuration's 'threads' or else cores / workers; "
                       "workers x threads stays <= cores")
    _add_device(bids)

    dicom = commands.add_parser("dicom2bids", help="convert multi-echo GRE DICOM to BIDS magnitude/phase + sidecars")
    dicom.add_argument("dicom_dir", help="folder searched recursively for DICOM files")
    dicom.add_argument("bids_dir", help="BIDS dataset folder to write into (created)")
    dicom.add_argument("--subject", help="subject label (default: PatientID, letters and digits only)")
    dicom.add_argument("--session", help="session label (default: none)")
    dicom.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                       help="progress display (default: bar on a terminal, else none)")
    dicom.add_argument("--overwrite", action="store_true", help="replace existing files in the BIDS folder")
    return parser


def console_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``qsm`` console script and ``python -m QSMLib.cli``: a process of its own.

    Its allocator keeps freed memory for the next array (:mod:`QSMLib._allocator`);
    :func:`main` alone, as called from another program, leaves that process's allocator as it is.
    """
    keep_freed_memory()
    return main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``qsm`` command with ``argv`` (default: the process's arguments); returns the exit code."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = QuietPipe(sys.stdout), QuietPipe(sys.stderr)
    try:
        return _main(build_parser().parse_args(argv))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams


def _main(args: argparse.Namespace) -> int:
    mode = args.progress or ("bar" if sys.stderr.isatty() else "none")
    printer = ProgressPrinter(mode)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handlers: dict[str, Callable[..., dict]] = {
                "demo": _demo, "run": _run, "bids": _bids, "dicom2bids": _dicom2bids}
            outputs = handlers[args.command](args, printer, cancel, caught)
        _flush_warnings(caught, printer)
        printer.finish_line()
        printer.event("done", outputs={k: str(v) for k, v in outputs.items()})
        return EXIT_OK
    except QSMInputError as error:
        return _fail(printer, caught, EXIT_INPUT, f"Error: {error}")
    except SomeFailed as failed:
        return _fail(printer, caught, EXIT_SOME_FAILED, f"Error: {failed}")
    except (QSMCancelled, KeyboardInterrupt):
        detail = ("acquisitions that finished before are complete; a rerun does the rest"
                  if args.command == "bids" else "no output was written")
        return _fail(printer, caught, EXIT_CANCELLED, f"Cancelled: {detail}.")
    except MemoryError:
        return _fail(printer, caught, EXIT_INTERNAL, "Out of memory: process a smaller volume or free memory.")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(printer: ProgressPrinter, caught: list, code: int, message: str) -> int:
    _flush_warnings(caught, printer)  # what was noticed before the failure can explain it
    printer.finish_line()
    printer.event("error", message=message)
    sys.stderr.write(message + "\n")
    return code


def _flush_warnings(caught: list, printer: ProgressPrinter) -> None:
    for record in caught:
        printer.warn(str(record.message))
    caught.clear()


def _run(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    field_file = args.total_field or args.local_field
    if args.total_field and args.local_field:
        raise QSMInputError("Give either --total-field or --local-field, not both.")
    if field_file and (args.mag or args.phase):
        raise QSMInputError("Give either --mag/--phase or a field map, not both.")
    if not field_file and not (args.mag and args.phase):
        raise QSMInputError("Give --mag and --phase (multi-echo GRE), or --total-field/--local-field with --mask.")
    config = _load_config(args)
    requested = run.requested_outputs(args.outputs)
    b0_direction = _parse_floats(args.b0_direction, "--b0-direction") if args.b0_direction else None
    if field_file:
        inputs = run.read_field(
            field_file, field_kind="total" if args.total_field else "local", mask=args.mask, b0_tesla=args.b0,
            b0_direction=b0_direction, labels=args.labels, label_names=args.label_names,
        )
    else:
        inputs = run.read_acquisition(
            args.mag, args.phase, echo_times_s=_parse_floats(args.te, "--te") if args.te else None,
            b0_tesla=args.b0, b0_direction=b0_direction, phase_scale=args.phase_scale, phase_sign=args.phase_sign,
            bipolar=args.bipolar, mask=args.mask, labels=args.labels, label_names=args.label_names,
        )
    run.check_rois(args.rois, inputs)
    _flush_warnings(caught, printer)
    check_output_folder(args.out, run.planned_run_files(inputs, requested, args.compress, rois=args.rois),
                        args.overwrite)
    # the atlas registration takes the last part of the progress bar
    # the phase was read for this run only: the phase stages may write into it
    result = run.reconstruct(inputs, config, requested=requested, overwrite_phase=True, cancel=cancel,
                             progress=sub_progress(printer, 0.0, 0.85) if args.rois else printer)
    rois = None
    if args.rois:
        rois = run.add_atlas_rois(inputs, result, progress=sub_progress(printer, 0.85, 1.0), cancel=cancel)
    _flush_warnings(caught, printer)
    printer.chosen(result.parameters)
    written = run.write_run(args.out, result, inputs, requested, compression=args.compress, rois=rois,
                            provenance={"command": " ".join(sys.argv), "config_source": args.config})
    _flush_warnings(caught, printer)
    return written


def _load_config(args: argparse.Namespace) -> PipelineConfig:
    """The configuration, with ``--threads`` and ``--device`` (when given) in place of its own.

    Sets the threads for I/O, and checks that the device is there before anything is written.
    """
    config = load_config(args.config)
    if args.threads is not None:
        config.threads = check_thread_count(args.threads)
    if args.device is not None:
        config.device = args.device
    resolve_device(config.device)
    set_threads(config.threads)
    return config


def _demo(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    from . import metrics
    from .io.nifti import write_volume
    from .phantom import BRAIN_LABELS, deep_grey_matter_labels, simulate_head
    from .report import reconstruction_qc, write_png

    config = _load_config(args)
    out = check_output_folder(args.out, planned_files([], True) + ["qc.png"], args.overwrite)
    printer(0.0, "phantom: simulating head")
    phantom = simulate_head(voxel_size_mm=(args.voxel_size,) * 3, oblique_deg=args.oblique)
    acquisition = phantom.acquisition
    brain_labels = {k: v for k, v in phantom.label_names.items() if k in BRAIN_LABELS}
    labels = np.where(np.isin(phantom.labels, BRAIN_LABELS), phantom.labels, 0).astype(np.int16)
    result = run_pipeline(acquisition, config, labels=labels, label_names=brain_labels,
                          progress=printer, cancel=cancel)
    _flush_warnings(caught, printer)
    qc = reconstruction_qc(result, acquisition, name=f"QSM demo, head phantom{', oblique' if args.oblique else ''}")
    inputs_dir = out / "inputs"
    inputs_dir.mkdir(parents=True, exist_ok=True)
    for name, volume in (("magnitude", acquisition.magnitude), ("phase", acquisition.phase)):
        for echo, echo_volume in enumerate(volume, start=1):
            write_volume(inputs_dir / f"{name}_echo-{echo}.nii.gz", echo_volume, acquisition.affine)
            (inputs_dir / f"{name}_echo-{echo}.json").write_text(json.dumps({
                "EchoTime": acquisition.echo_times_s[echo - 1], "MagneticFieldStrength": acquisition.b0_tesla}))
    write_volume(inputs_dir / "labels.nii.gz", labels, acquisition.affine)
    (inputs_dir / "labels.tsv").write_text(
        "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(brain_labels.items())))
    write_volume(inputs_dir / "chi_truth_ppm.nii.gz", phantom.chi_ppm, acquisition.affine)

    # Scored where chi is returned inside the brain (the truth is defined there).
    scored = result.local_mask & phantom.brain_mask
    accuracy = metrics.summary(result.chi_ppm, phantom.chi_ppm, scored)
    errors = metrics.roi_mean_errors_ppb(result.chi_ppm, phantom.chi_ppm, phantom.labels,
                                         deep_grey_matter_labels(phantom), scored)
    outputs = write_outputs(
        out, run.output_maps(result, []), acquisition.affine, roi_rows=result.roi,
        provenance=result.provenance({"phantom": {"voxel_size_mm": args.voxel_size, "oblique_deg": args.oblique},
                                      "accuracy": accuracy, "roi_error_ppb": errors}),
    )
    outputs["qc"] = write_png(out / "qc.png", qc).resolve()
    printer.finish_line()
    if printer.mode != "json":
        print(f"QSM demo: phantom {acquisition.spatial_shape} at {args.voxel_size} mm, "
              f"{acquisition.n_echoes} echoes, {sum(result.timings_s.values()):.1f} s")
        print("  chi vs truth: " + ", ".join(f"{k} {v:.3g}" for k, v in accuracy.items()))
        print("  deep grey matter ROI mean error (ppb): " + ", ".join(f"{k} {v:+.1f}" for k, v in errors.items()))
        print(f"  outputs in {out.resolve()} (qc.png: rows magnitude, total field, local field, chi; "
              "columns axial, coronal, sagittal; each row's window on its colour bar)")
        print(f"  inputs for 'qsm run' in {inputs_dir.resolve()}")
    return outputs


def _bids(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    from .batch import run_cohort

    def on_record(record: dict) -> None:
        printer.event("acquisition", **{k: record[k] for k in ("name", "status", "reason", "seconds", "outputs")})
        if record["status"] == "failed" and printer.mode != "json":
            printer.warn(f"{record['name']} failed: {record['reason']}")

    def progress(fraction: float, message: str) -> None:
        _flush_warnings(caught, printer)  # e.g. about the dataset, shown before hours of work, not after
        printer(fraction, message)

    summary = run_cohort(
        args.bids_root, args.out_dir, participant_labels=args.participant_label, config=args.config,
        outputs=[o.strip() for o in args.outputs.split(",") if o.strip()], labels_dir=args.labels,
        rois=args.rois, phase_sign=args.phase_sign, bipolar=args.bipolar,
        scheduler=args.scheduler, n_workers=args.workers, overwrite=args.overwrite,
        threads=args.threads, device=args.device, progress=progress, on_record=on_record, cancel=cancel,
    )
    _flush_warnings(caught, printer)
    printer.finish_line()
    counts = {status: summary.count(status) for status in ("processed", "skipped", "failed")}
    printer.event("summary", counts=counts, cluster=summary.cluster,
                  files={key: str(path) for key, path in summary.files.items()})
    if printer.mode != "json":
        print(f"QSM cohort on {summary.cluster}: {counts['processed']} processed, {counts['skipped']} already "
              f"complete, {counts['failed']} failed")
        print(f"  report: {summary.files['index']}")
    if counts["failed"]:
        failed = [r["name"] for r in summary.records if r["status"] == "failed"]
        raise SomeFailed(f"{len(failed)} of {len(summary.records)} acquisitions failed ({', '.join(failed)}); the "
                         f"reasons are in {summary.files['summary']} and {summary.files['index']}. The others' "
                         "outputs are complete; a rerun redoes only what is missing.")
    return summary.files


def _dicom2bids(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    from .io.dicom import dicom_to_bids

    conversion = dicom_to_bids(args.dicom_dir, args.bids_dir, subject=args.subject, session=args.session,
                               overwrite=args.overwrite, progress=printer, cancel=cancel)
    _flush_warnings(caught, printer)
    printer.finish_line()
    for converted in conversion.runs:
        printer.event("converted", **converted)
        if printer.mode != "json":
            print(f"{converted['name']}: {converted['n_echoes']} echoes, {converted['manufacturer']}, "
                  f"phase {converted['phase_scaling']}")
            for note in converted["notes"]:
                print(f"  note: {note}")
    for skipped in conversion.skipped:
        printer.event("skipped", **skipped)
        if printer.mode != "json":
            print(f"skipped {skipped['series']}: {skipped['reason']}")
    if not conversion.runs and not conversion.failed:
        raise QSMInputError(f"No multi-echo GRE magnitude/phase series found in {args.dicom_dir} (the skipped "
                            "series and why are listed above).")
    if conversion.failed:
        raise SomeFailed(f"{len(conversion.failed)} series could not be converted: "
                         + "; ".join(f"{f['series']}: {f['reason']}" for f in conversion.failed))
    return {converted["name"]: Path(converted["files"][0]).parent for converted in conversion.runs}


if __name__ == "__main__":
    sys.exit(console_main())
