"""The ``qsm`` command: ``qsm demo``, ``qsm run``, ``qsm bids`` and ``qsm dicom2bids``.

Exit codes: 0 success, 2 bad input (one-paragraph message, no traceback),
3 some acquisitions of a cohort (or DICOM series) failed and the others
succeeded, 130 cancelled, 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ._version import __version__
from .errors import QSMCancelled, QSMInputError, QSMWarning
from .io.nifti import load_acquisition, read_map_like, read_volume
from .io.results import MAP_FILES, RELAXOMETRY_OUTPUTS, check_output_folder, file_checksum, planned_files, write_outputs
from .masking import validate_user_mask
from .phase.bipolar import BIPOLAR_THRESHOLD_RAD, bipolar_score
from .pipeline import (
    PRESETS,
    PipelineConfig,
    QSMResult,
    StageConfig,
    load_config,
    run_pipeline,
    run_pipeline_from_field,
)
from .roi import read_label_names

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsm", description="Quantitative susceptibility mapping (QSMLib).")
    parser.add_argument("--version", action="version", version=f"QSMLib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="simulate a head phantom, reconstruct it and report accuracy")
    demo.add_argument("--out", default="qsm_demo", help="output folder (default: ./qsm_demo)")
    demo.add_argument("--voxel-size", type=float, default=1.5, help="phantom voxel size in mm (default 1.5)")
    demo.add_argument("--oblique", type=float, default=0.0, help="acquisition tilt in degrees (default 0)")
    _add_common(demo)

    run = commands.add_parser("run", help="process one multi-echo GRE acquisition (or a field map)")
    run.add_argument("--mag", nargs="+", metavar="FILE", help="magnitude: one 4D file or one 3D file per echo")
    run.add_argument("--phase", nargs="+", metavar="FILE", help="phase: one 4D file or one 3D file per echo")
    run.add_argument("--total-field", metavar="FILE", help="start from a total field map in Hz (needs --mask)")
    run.add_argument("--local-field", metavar="FILE", help="start from a local field map in Hz (needs --mask)")
    run.add_argument("--te", help="echo times in seconds, comma-separated (default: BIDS sidecars)")
    run.add_argument("--b0", type=float, help="field strength in tesla (default: sidecar ImagingFrequency)")
    run.add_argument("--b0-direction", help="B0 as a unit vector in array axes i,j,k... (default: from the affine)")
    run.add_argument("--mask", metavar="FILE", help="brain mask on the image grid (replaces the automatic mask)")
    run.add_argument("--labels", metavar="FILE", help="label map for ROI statistics (0 = background)")
    run.add_argument("--label-names", metavar="FILE", help="TSV (index, name) or JSON label names")
    run.add_argument("--bipolar", action="store_true", help="even echoes were read out with reversed polarity")
    run.add_argument("--phase-sign", type=int, choices=(1, -1), default=1, help="phase handedness (GE: -1)")
    run.add_argument("--phase-scale", default="auto", choices=("auto", "radians", "degrees", "integer", "range"),
                     help="how the phase file is scaled (default: detect)")
    run.add_argument("--outputs", default="", help=f"extra maps to write, comma-separated: {', '.join(MAP_FILES)}")
    run.add_argument("--out", required=True, help="output folder")
    _add_common(run)

    bids = commands.add_parser("bids", help="process every multi-echo GRE run of a BIDS dataset on Dask")
    bids.add_argument("bids_root", help="BIDS dataset root (sub-*/[ses-*/]anat/*_part-{mag,phase}_MEGRE.nii.gz)")
    bids.add_argument("out_dir", help="BIDS derivatives folder (created; finished acquisitions are skipped)")
    bids.add_argument("--participant-label", nargs="+", metavar="LABEL", help="only these subjects (01 or sub-01)")
    bids.add_argument("--labels", metavar="DIR", help="derivatives folder of *_dseg.nii.gz label maps for ROI stats")
    bids.add_argument("--outputs", default="", help="extra maps, comma-separated: local_mask, r2star, t2star")
    bids.add_argument("--phase-sign", type=int, choices=(1, -1), default=1, help="phase handedness (GE: -1)")
    where = bids.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://node1:8786")
    where.add_argument("--workers", type=int, help="local cluster workers (default: cores, limited by memory)")
    _add_common(bids)

    dicom = commands.add_parser("dicom2bids", help="convert multi-echo GRE DICOM to BIDS magnitude/phase + sidecars")
    dicom.add_argument("dicom_dir", help="folder searched recursively for DICOM files")
    dicom.add_argument("bids_dir", help="BIDS dataset folder to write into (created)")
    dicom.add_argument("--subject", help="subject label (default: PatientID, letters and digits only)")
    dicom.add_argument("--session", help="session label (default: none)")
    dicom.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                       help="progress display (default: bar on a terminal, else none)")
    dicom.add_argument("--overwrite", action="store_true", help="replace existing files in the BIDS folder")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``qsm`` console script."""
    args = build_parser().parse_args(argv)
    mode = args.progress or ("bar" if sys.stderr.isatty() else "none")
    printer = ProgressPrinter(mode)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handlers: dict[str, Callable[..., dict]] = {
                "demo": _demo, "run": _run, "bids": _bids, "dicom2bids": _dicom2bids}
            outputs = handlers[args.command](args, printer, cancel, caught)
        printer.finish_line()
        printer.event("done", outputs={k: str(v) for k, v in outputs.items()})
        return EXIT_OK
    except QSMInputError as error:
        return _fail(printer, EXIT_INPUT, f"Error: {error}")
    except SomeFailed as failed:
        return _fail(printer, EXIT_SOME_FAILED, f"Error: {failed}")
    except (QSMCancelled, KeyboardInterrupt):
        detail = ("acquisitions that finished before are complete; a rerun does the rest"
                  if args.command == "bids" else "no output was written")
        return _fail(printer, EXIT_CANCELLED, f"Cancelled: {detail}.")
    except MemoryError:
        return _fail(printer, EXIT_INTERNAL, "Out of memory: process a smaller volume or free memory.")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(printer: ProgressPrinter, code: int, message: str) -> int:
    printer.finish_line()
    printer.event("error", message=message)
    sys.stderr.write(message + "\n")
    return code


def _flush_warnings(caught: list, printer: ProgressPrinter) -> None:
    for record in caught:
        printer.warn(str(record.message))
    caught.clear()


def _labels_and_names(args: argparse.Namespace, affine: np.ndarray, shape: tuple) -> tuple:
    if args.label_names and not args.labels:
        raise QSMInputError("--label-names needs --labels.")
    if not args.labels:
        return None, None
    labels = read_map_like(args.labels, affine, shape, "label map")
    if labels.dtype.kind == "f" and (not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels))):
        raise QSMInputError(f"The label map {args.labels} must hold whole numbers (one integer per region).")
    names_path = Path(args.label_names) if args.label_names else _sibling_tsv(Path(args.labels))
    names = read_label_names(names_path) if names_path else None
    return labels.astype(np.int32), names


def _sibling_tsv(labels_path: Path) -> Optional[Path]:
    name = labels_path.name
    stem = name[:-7] if name.endswith(".nii.gz") else labels_path.stem
    candidate = labels_path.with_name(stem + ".tsv")
    return candidate if candidate.is_file() else None


def _requested_outputs(text: str) -> list[str]:
    requested = [o.strip() for o in text.split(",") if o.strip()]
    unknown = [o for o in requested if o not in MAP_FILES]
    if unknown:
        raise QSMInputError(f"Unknown output(s) {unknown}; choose from {', '.join(MAP_FILES)}.")
    return requested


#: Output name -> key of ``QSMResult.maps`` for the maps that stages produce.
_STAGE_MAP_OUTPUTS = {
    "fit_residual": "fit_residual_rad", "field_weight": "field_weight", "romeo_quality": "romeo_quality",
    "phase_offset": "phase_offset_rad", "r2star": "r2star", "t2star": "t2star",
}


def _result_maps(result: QSMResult, requested: Sequence[str]) -> dict[str, np.ndarray]:
    sources = {
        "chi": result.chi_ppm, "mask": result.mask, "local_field": result.local_field_hz,
        "total_field": result.total_field_hz, "local_mask": result.local_mask,
        **{name: result.maps.get(key) for name, key in _STAGE_MAP_OUTPUTS.items()},
    }
    maps = {}
    for name in dict.fromkeys(["chi", "mask", "total_field", "local_field", *requested]):
        if sources.get(name) is not None:
            maps[name] = sources[name]
        elif name in requested:
            warnings.warn(f"Output {name!r} is not produced by this configuration (e.g. romeo_quality needs "
                          "romeo unwrapping, phase_offset needs mcpc3ds); it was not written.", QSMWarning,
                          stacklevel=2)
    return maps


def _enable_requested_stages(config: PipelineConfig, requested: Sequence[str]) -> None:
    """Asking for R2*/T2* maps turns on the relaxometry stage (log-linear fit) if the config has none."""
    if any(o in RELAXOMETRY_OUTPUTS for o in requested) and config.relaxometry.method == "none":
        config.relaxometry = StageConfig("loglinear")


def _run(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    field_file = args.total_field or args.local_field
    if args.total_field and args.local_field:
        raise QSMInputError("Give either --total-field or --local-field, not both.")
    if field_file and (args.mag or args.phase):
        raise QSMInputError("Give either --mag/--phase or a field map, not both.")
    if not field_file and not (args.mag and args.phase):
        raise QSMInputError("Give --mag and --phase (multi-echo GRE), or --total-field/--local-field with --mask.")
    config = load_config(args.config)
    requested = _requested_outputs(args.outputs)
    _enable_requested_stages(config, requested)
    inputs: dict[str, Any] = {"command": " ".join(sys.argv), "config_source": args.config}

    if field_file:
        result, affine, inputs = _run_from_field(args, config, field_file, printer, cancel, inputs)
    else:
        echo_times = _parse_floats(args.te, "--te") if args.te else None
        acquisition, info = load_acquisition(
            args.mag, args.phase, echo_times_s=echo_times, b0_tesla=args.b0, phase_scale=args.phase_scale,
            phase_sign=args.phase_sign, bipolar=args.bipolar,
            b0_direction=_parse_floats(args.b0_direction, "--b0-direction") if args.b0_direction else None,
        )
        score = 0.0 if args.bipolar else bipolar_score(acquisition.phase, acquisition.magnitude,
                                                        acquisition.echo_times_s)
        if score > BIPOLAR_THRESHOLD_RAD:
            warnings.warn(
                f"The even echoes look like a bipolar readout (odd/even phase mismatch {score:.2f} rad), but "
                "--bipolar is not set: if the sequence used bipolar gradients, rerun with --bipolar.",
                QSMWarning, stacklevel=2)
        _flush_warnings(caught, printer)
        affine = acquisition.affine
        mask = (validate_user_mask(read_map_like(args.mask, affine, acquisition.spatial_shape, "mask"),
                                   acquisition.spatial_shape) if args.mask else None)
        labels, names = _labels_and_names(args, affine, acquisition.spatial_shape)
        files = planned_files(requested, labels is not None)
        check_output_folder(args.out, files, args.overwrite)
        inputs.update(info, echo_times_s=list(acquisition.echo_times_s), b0_tesla=acquisition.b0_tesla,
                      b0_direction=list(acquisition.b0_direction), voxel_size_mm=list(acquisition.voxel_size_mm),
                      files=_checksums([*args.mag, *args.phase, args.mask, args.labels]))
        result = run_pipeline(acquisition, config, mask=mask, labels=labels, label_names=names,
                              progress=printer, cancel=cancel)
    _flush_warnings(caught, printer)
    printer.chosen(result.parameters)
    return write_outputs(args.out, _result_maps(result, requested), affine,
                         roi_rows=result.roi if result.roi else None, provenance=result.provenance(inputs))


def _run_from_field(args, config, field_file, printer, cancel, inputs):
    if not args.mask:
        raise QSMInputError("Starting from a field map needs --mask (there is no magnitude to derive one from).")
    field, affine = read_volume(field_file)
    if field.ndim != 3:
        raise QSMInputError(f"{field_file} must be a 3D field map in Hz, got shape {field.shape}.")
    from .acquisition import b0_direction_from_affine, voxel_size_from_affine
    from .io.bids import field_strength_from_sidecars, read_sidecar

    b0 = args.b0
    if b0 is None:
        b0, source = field_strength_from_sidecars([read_sidecar(Path(field_file))])
        if b0 is None:
            raise QSMInputError("No field strength for the field map: give --b0 in tesla.")
    mask = validate_user_mask(read_map_like(args.mask, affine, field.shape, "mask"), field.shape)
    labels, names = _labels_and_names(args, affine, field.shape)
    requested = _requested_outputs(args.outputs)
    check_output_folder(args.out, planned_files(requested, labels is not None), args.overwrite)
    direction = (_parse_floats(args.b0_direction, "--b0-direction") if args.b0_direction
                 else b0_direction_from_affine(affine))
    inputs.update(field_kind="total" if args.total_field else "local", b0_tesla=b0, b0_direction=list(direction),
                  files=_checksums([field_file, args.mask, args.labels]))
    result = run_pipeline_from_field(
        field, mask, field_kind=inputs["field_kind"], voxel_size_mm=voxel_size_from_affine(affine),
        b0_direction=direction, b0_tesla=b0, config=config, labels=labels, label_names=names,
        progress=printer, cancel=cancel,
    )
    return result, affine, inputs


def _checksums(paths: Sequence[Optional[str]]) -> dict[str, str]:
    return {str(Path(p).resolve()): file_checksum(p) for p in paths if p}


def _demo(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    from . import metrics
    from .io.nifti import write_volume
    from .phantom import BRAIN_LABELS, deep_grey_matter_labels, simulate_head
    from .report import qc_montage, write_png

    config = load_config(args.config)
    out = check_output_folder(args.out, planned_files([], True) + ["qc.png"], args.overwrite)
    printer(0.0, "phantom: simulating head")
    phantom = simulate_head(voxel_size_mm=(args.voxel_size,) * 3, oblique_deg=args.oblique)
    acquisition = phantom.acquisition
    brain_labels = {k: v for k, v in phantom.label_names.items() if k in BRAIN_LABELS}
    labels = np.where(np.isin(phantom.labels, BRAIN_LABELS), phantom.labels, 0).astype(np.int16)
    result = run_pipeline(acquisition, config, labels=labels, label_names=brain_labels,
                          progress=printer, cancel=cancel)
    _flush_warnings(caught, printer)
    qc = qc_montage(
        [("magnitude", acquisition.magnitude[0], None), ("total field (Hz)", result.total_field_hz, None),
         ("local field (Hz)", result.local_field_hz, None), ("chi (ppm)", result.chi_ppm, (-0.15, 0.25))],
        acquisition.affine, mask=result.mask,
    )
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
        out, _result_maps(result, []), acquisition.affine, roi_rows=result.roi,
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
              "columns axial, coronal, sagittal)")
        print(f"  inputs for 'qsm run' in {inputs_dir.resolve()}")
    return outputs


def _bids(args: argparse.Namespace, printer: ProgressPrinter, cancel: threading.Event, caught: list) -> dict:
    from .batch import run_cohort

    def on_record(record: dict) -> None:
        printer.event("acquisition", **{k: record[k] for k in ("name", "status", "reason", "seconds", "outputs")})
        if record["status"] == "failed" and printer.mode != "json":
            printer.warn(f"{record['name']} failed: {record['reason']}")

    summary = run_cohort(
        args.bids_root, args.out_dir, participant_labels=args.participant_label, config=args.config,
        outputs=[o.strip() for o in args.outputs.split(",") if o.strip()], labels_dir=args.labels,
        phase_sign=args.phase_sign, scheduler=args.scheduler, n_workers=args.workers, overwrite=args.overwrite,
        progress=printer, on_record=on_record, cancel=cancel,
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
    for run in conversion.runs:
        printer.event("converted", **run)
        if printer.mode != "json":
            print(f"{run['name']}: {run['n_echoes']} echoes, {run['manufacturer']}, phase {run['phase_scaling']}")
            for note in run["notes"]:
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
    return {run["name"]: Path(run["files"][0]).parent for run in conversion.runs}


if __name__ == "__main__":
    sys.exit(main())
