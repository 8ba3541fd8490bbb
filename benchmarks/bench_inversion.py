"""Speed, memory and accuracy of background removal and dipole inversion.

    python benchmarks/bench_inversion.py              # speed and peak memory at 256 x 256 x 176
    python benchmarks/bench_inversion.py --cancel     # also: cancel latency of the iterative methods
    python benchmarks/bench_inversion.py --accuracy   # accuracy tables on the 1 mm phantom
    python benchmarks/bench_inversion.py --methods tv,medi

Speed: the head phantom at 1 mm in a 256 x 256 x 176 field of view (SNR 100,
5 echoes) is simulated once; its total field and reliability come from the
pipeline's weighted echo fit of the phase (unwrapped with the known field so
no unwrapping error enters), its local field is the true one plus that fit's
noise. Every method then runs in a fresh process, so each peak resident
memory (``VmHWM``) is that method's own; the input arrays' memory is shown
separately ("inputs").

Accuracy: the phantom at 1 mm (192 x 224 x 176, simulated on a 0.5 mm grid,
so no inverse crime):

- dipole inversion from the known local field, noise-free and with the echo
  fit's noise: NRMSE, HFEN (%), correlation and the deep grey matter ROI
  mean errors (ppb, both maps referenced to the brain mean);
- background removal of the (noisy) total field on the brain mask and on a
  generous mask that also holds the extracerebral CSF: local-field NRMSE
  against the truth, and the susceptibility after TV inversion;
- the whole pipeline from raw phase with the ``consensus`` preset (and with
  other background removal / inversion choices).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# benchmark this checkout, whatever QSMLib the environment has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKGROUND = ("vsharp", "ismv", "resharp", "pdf", "lbv")
INVERSION = ("tkd", "l2", "tv", "nltv", "rts", "medi", "tfi")
#: Issue 4 targets at 256 x 256 x 176, seconds.
TARGET_S = {"vsharp": 5, "pdf": 30, "lbv": 20, "tv": 20, "nltv": 40, "rts": 20, "medi": 90}


def _memory_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in GiB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _noisy_fields(phantom):
    """Total field and reliability from the weighted echo fit, and the local field with the same noise."""
    from QSMLib.fieldmap import weighted_linear

    acq = phantom.acquisition
    times = np.asarray(acq.echo_times_s, np.float32).reshape(-1, 1, 1, 1)
    model = phantom.phase_offset_rad[None] + np.float32(2 * np.pi) * phantom.total_field_hz[None] * times
    unwrapped = acq.phase + np.float32(2 * np.pi) * np.round((model - acq.phase) / np.float32(2 * np.pi))
    total, maps = weighted_linear(unwrapped, acq.magnitude, acq.echo_times_s, mask=phantom.brain_mask)
    local = (phantom.local_field_hz + (total - phantom.total_field_hz)).astype(np.float32)
    return total.astype(np.float32), local, maps["field_weight"]


def _registry(stage: str) -> dict:
    from QSMLib.background import METHODS as BACKGROUND_METHODS
    from QSMLib.inversion import METHODS as INVERSION_METHODS

    return BACKGROUND_METHODS if stage == "background" else INVERSION_METHODS


def _call(stage: str, method: str, data: dict, **extra):
    """Run one registered method with the pipeline inputs it declares: (local field, valid mask) or chi."""
    available = {"b0_direction": tuple(data["b0_direction"]), "b0_tesla": float(data["b0_tesla"]),
                 "field_weight": data["weight"], "magnitude": data["magnitude"]}
    entry = _registry(stage)[method]
    inputs = {name: available[name] for name in entry.inputs if available.get(name) is not None}
    if stage == "background":
        result = entry(data["total"], data["mask"], tuple(data["voxel_size_mm"]), **inputs, **extra)
        return result.local_field_hz, result.mask
    # a single-step method (TFI) inverts the total field itself
    field = data["total"] if entry.takes_total_field else data["local"]
    return entry(field, data["mask"], tuple(data["voxel_size_mm"]), **inputs, **extra).chi_ppm


def _parameters(stage: str, method: str) -> set[str]:
    return _registry(stage)[method].tunable_parameters()


def _worker(stage: str, method: str, path: str, cancel: bool) -> None:
    """Child process: load the inputs, run one method, print one JSON line."""
    data = dict(np.load(path))
    inputs_gib = _memory_gib("VmRSS")
    result = {"stage": stage, "method": method, "inputs_gib": inputs_gib}
    if cancel:
        from QSMLib.errors import QSMCancelled

        event = threading.Event()
        requested: list[float] = []

        def request() -> None:
            requested.append(time.perf_counter())
            event.set()

        # without a stopping rule only the cancel can end the run
        endless = {"max_iterations": 100_000, "tolerance": 1e-30}
        accepted = _parameters(stage, method)
        timer = threading.Timer(3.0, request)
        timer.start()
        try:
            _call(stage, method, data, cancel=event, **{k: v for k, v in endless.items() if k in accepted})
        except QSMCancelled:
            result["cancel_latency_s"] = time.perf_counter() - requested[0]
        timer.cancel()
    else:
        fractions: list[float] = []
        start, cpu = time.perf_counter(), time.process_time()
        _call(stage, method, data, progress=lambda fraction, message: fractions.append(fraction))
        result.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu,
                      progress_reports=len(fractions), peak_gib=_memory_gib("VmHWM"))
    print(json.dumps(result))


def _run_worker(stage: str, method: str, path: Path, cancel: bool) -> dict:
    command = [sys.executable, __file__, "--worker", stage, method, str(path)] + (["--cancel"] if cancel else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def speed(methods: list[str], cancel: bool) -> None:
    """Time and peak memory per method at 256 x 256 x 176; optionally the cancel latency."""
    import os

    from QSMLib.phantom import simulate_head

    phantom = simulate_head(voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(256.0, 256.0, 176.0), supersample=1)
    total, local, weight = _noisy_fields(phantom)
    acq = phantom.acquisition
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inputs.npz"
        np.savez(path, total=total, local=local, weight=weight, mask=phantom.brain_mask,
                 magnitude=acq.magnitude, voxel_size_mm=np.asarray(acq.voxel_size_mm),
                 b0_direction=np.asarray(acq.b0_direction), b0_tesla=np.float64(acq.b0_tesla))
        print(f"256 x 256 x 176 at 1 mm, {int(phantom.brain_mask.sum())} brain voxels, "
              f"{os.cpu_count()} CPUs\n")
        print("| stage | method | time (s) | CPU (s) | target (s) | peak RSS (GiB) | inputs (GiB) |"
              + (" cancel latency (s) |" if cancel else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if cancel else ""))
        for method in methods:
            stage = "background" if method in BACKGROUND else "inversion"
            row = _run_worker(stage, method, path, cancel=False)
            line = (f"| {stage} | {method} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
                    f"{TARGET_S.get(method, '-')} | {row['peak_gib']:.2f} | {row['inputs_gib']:.2f} |")
            if cancel:
                latency = "-"
                if method not in ("vsharp", "tkd", "l2"):  # the iterative methods
                    measured = _run_worker(stage, method, path, cancel=True).get("cancel_latency_s", float("nan"))
                    latency = f"{measured:.2f}"
                line += f" {latency} |"
            print(line, flush=True)


def _chi_row(name: str, chi: np.ndarray, phantom, mask: np.ndarray) -> str:
    from QSMLib import metrics
    from QSMLib.phantom import deep_grey_matter_labels

    errors = metrics.roi_mean_errors_ppb(chi, phantom.chi_ppm, phantom.labels, deep_grey_matter_labels(phantom), mask)
    scores = (metrics.nrmse(chi, phantom.chi_ppm, mask), metrics.hfen(chi, phantom.chi_ppm, mask),
              metrics.correlation(chi, phantom.chi_ppm, mask))
    return (f"| {name} | {scores[0]:.1f} | {scores[1]:.1f} | {scores[2]:.3f} | "
            + " | ".join(f"{errors.get(region, float('nan')):+.1f}" for region in _DGM) + " |")


_DGM = ("caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra", "red_nucleus", "dentate")
_HEADER = ("| method | NRMSE % | HFEN % | corr | " + " | ".join(_DGM) + " |\n|---|---|---|---|"
           + "---|" * len(_DGM))


def accuracy(methods: list[str]) -> None:
    """Accuracy tables on the 1 mm phantom (dipole only, background removal, whole pipeline)."""
    from QSMLib import metrics
    from QSMLib.inversion import tv
    from QSMLib.phantom import simulate_head
    from QSMLib.pipeline import PRESETS, PipelineConfig, run_pipeline

    phantom = simulate_head(voxel_size_mm=(1.0, 1.0, 1.0), snr=100.0, seed=0)
    total, local, weight = _noisy_fields(phantom)
    acq = phantom.acquisition
    mask = phantom.brain_mask
    base = {"mask": mask, "voxel_size_mm": acq.voxel_size_mm, "b0_direction": acq.b0_direction,
            "b0_tesla": acq.b0_tesla, "magnitude": acq.magnitude, "total": total}
    print(f"Phantom 1 mm, {mask.shape}, simulated at 0.5 mm; echo-fit field noise SD "
          f"{float((total - phantom.total_field_hz)[mask].std()):.2f} Hz, local field SD "
          f"{float(phantom.local_field_hz[mask].std()):.2f} Hz. ROI errors in ppb.\n")
    inversions = [m for m in methods if m in INVERSION]
    for title, field, field_weight in (("noise-free local field", phantom.local_field_hz, None),
                                       ("local field with echo-fit noise (weighted)", local, weight)):
        print(f"Dipole inversion, {title}:\n\n{_HEADER}")
        for method in inversions:
            start = time.perf_counter()
            chi = _call("inversion", method, dict(base, local=field, weight=field_weight))
            print(_chi_row(f"{method} ({time.perf_counter() - start:.0f} s)", chi, phantom, mask), flush=True)
        print()
    print("Background removal of the noisy total field, then TV inversion; scores on valid voxels in the brain. "
          "'brain+CSF' adds the extracerebral CSF, whose outer layer shares voxels with bone:\n")
    print("| method | mask | local NRMSE % | valid brain voxels |" + _HEADER.split("\n")[0][len("| method |"):])
    print("|---|---|---|---|---|---|---|" + "---|" * len(_DGM))
    masks = {"brain": mask, "brain+CSF": mask | (phantom.labels == 20)}
    runs = [(m, name, {}) for name in masks for m in methods if m in BACKGROUND]
    runs += [("lbv", "brain+CSF", {"erosion_mm": 2.0})] if "lbv" in methods else []
    for method, mask_name, params in runs:
        local_field, valid = _call("background", method, dict(base, mask=masks[mask_name], weight=weight), **params)
        chi = tv(local_field, valid, acq.voxel_size_mm, b0_direction=acq.b0_direction, b0_tesla=acq.b0_tesla,
                 field_weight=weight).chi_ppm
        scored = valid & mask
        label = method + "".join(f" {k}={v:g}" for k, v in params.items())
        row = _chi_row(label, chi, phantom, scored)
        print(f"| {label} | {mask_name} | {metrics.nrmse(local_field, phantom.local_field_hz, scored):.1f} | "
              f"{int(scored.sum())} |" + row[len(f"| {label} |"):], flush=True)
    print("\nWhole pipeline from raw phase (automatic mask), the consensus preset and variants of its last stages:\n")
    print(_HEADER)
    variants = {"consensus": {}, "consensus, lbv erosion_mm=2": {"background": {"method": "lbv", "params":
                {"erosion_mm": 2.0}}}, "consensus, nltv": {"inversion": {"method": "nltv"}},
                "consensus, medi": {"inversion": {"method": "medi"}}}
    for name, change in variants.items():
        config = PipelineConfig.from_dict({**PRESETS["consensus"]().to_dict(), **change})
        start = time.perf_counter()
        result = run_pipeline(acq, config)
        label = f"{name} ({config.background.method} + {config.inversion.method}, {time.perf_counter() - start:.0f} s)"
        print(_chi_row(label, result.chi_ppm, phantom, result.local_mask & mask), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accuracy", action="store_true", help="print the accuracy tables instead of timings")
    parser.add_argument("--cancel", action="store_true", help="also measure the cancel latency")
    parser.add_argument("--methods", default=",".join(BACKGROUND + INVERSION), help="comma-separated method names")
    parser.add_argument("--worker", nargs=3, metavar=("STAGE", "METHOD", "INPUTS"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        _worker(*arguments.worker, cancel=arguments.cancel)
        return
    methods = [m.strip() for m in arguments.methods.split(",") if m.strip()]
    unknown = set(methods) - set(BACKGROUND + INVERSION)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}")
    if arguments.accuracy:
        accuracy(methods)
    else:
        speed(methods, arguments.cancel)


if __name__ == "__main__":
    main()
