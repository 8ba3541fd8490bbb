"""Time, peak memory and exactness of the phase stage on a realistic head.

    python benchmarks/bench_phase.py [--echoes 9] [--voxel-size 1.0] [--no-skimage]

The head phantom (256 x 256 x 176 voxels at 1 mm, 9 echoes by default, phase
offset, noise, an air cavity with fields of several hundred Hz) is simulated
once and saved; every measurement then runs in a fresh process, so each peak
resident memory is that step's own (it includes the interpreter and the input
arrays, reported separately), and the process CPU time (from start, imports
included) shows the work when other jobs share the machine. Steps:

- ``romeo``: ROMEO-class unwrapping of one echo volume (the first and the
  last echo, with a neighbouring echo for the gradient coherence), next to
- ``skimage``: ``skimage.restoration.unwrap_phase`` (best path, Herraez et
  al. 2002 / Abdul-Rahman et al. 2007) on the same echo, when scikit-image
  is installed (a benchmark-only dependency);
- ``laplacian``: Laplacian unwrapping of the first echo, for reference;
- ``phase_stage``: the consensus phase stage for all echoes: MCPC-3D-S
  offset removal, ROMEO of echo 1 and temporal unwrapping of the others.

Exactness is the fraction of brain voxels whose unwrapped phase differs from
the truth (``phi0 + 2 pi f TE``) by a nonzero multiple of 2 pi, after removing
the most common multiple (one global 2 pi offset is arbitrary); for Laplacian,
which changes values, the RMS deviation from the truth in radians instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _memory_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in GiB.

    ``getrusage``'s maximum is inherited across fork and exec, so it would
    report the parent's phantom simulation; ``VmHWM`` starts afresh at exec.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _two_pi_error_fraction(unwrapped: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    turns = np.rint((unwrapped - truth) / (2 * np.pi)).astype(np.int64)[..., mask].reshape(-1, int(mask.sum()))
    common = np.array([np.bincount(t - t.min()).argmax() + t.min() for t in turns])
    return float(np.mean(np.any(turns != common[:, None], axis=0)))


def _child(folder: Path, step: str) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    times = meta["echo_times_s"]
    voxel = meta["voxel_size_mm"]
    brain = np.load(folder / "brain.npy")
    offset = np.load(folder / "offset.npy")
    field = np.load(folder / "field.npy")
    method, _, echo_text = step.partition(":")
    if method == "phase_stage":
        phase = np.load(folder / "phase.npy")
        magnitude = np.load(folder / "magnitude.npy")
    else:
        echo = int(echo_text)
        partner = echo + 1 if echo + 1 < len(times) else echo - 1
        phase = np.load(folder / "phase.npy", mmap_mode="r")[[echo, partner]].copy()
        magnitude = np.load(folder / "magnitude.npy", mmap_mode="r")[[echo, partner]].copy()
        truth = offset + np.float32(2 * np.pi * times[echo]) * field
    input_gib = _memory_gib("VmRSS")
    began = time.perf_counter()
    if method == "romeo":
        from QSMLib.unwrap.romeo import romeo_unwrap_volume

        unwrapped, _ = romeo_unwrap_volume(phase[0], magnitude=magnitude[0], phase2=phase[1],
                                           te_ratio=times[echo] / times[partner])
        seconds = time.perf_counter() - began
        quality = {"two_pi_error_fraction": _two_pi_error_fraction(unwrapped, truth, brain)}
    elif method == "skimage":
        from skimage.restoration import unwrap_phase

        unwrapped = unwrap_phase(phase[0].astype(np.float64))
        seconds = time.perf_counter() - began
        quality = {"two_pi_error_fraction": _two_pi_error_fraction(unwrapped, truth, brain)}
    elif method == "laplacian":
        from QSMLib.unwrap.laplacian import laplacian_unwrap_volume

        unwrapped = laplacian_unwrap_volume(phase[0], voxel)
        seconds = time.perf_counter() - began
        deviation = (unwrapped - truth)[brain]
        quality = {"rms_deviation_rad": float(np.std(deviation))}
    else:
        from QSMLib.phase import mcpc3ds
        from QSMLib.unwrap import romeo

        corrected, _ = mcpc3ds(phase, magnitude, times, voxel)
        after_offset = time.perf_counter() - began
        unwrapped, _ = romeo(corrected, magnitude, times, voxel)
        seconds = time.perf_counter() - began
        echo_times = np.asarray(times, np.float32).reshape(-1, 1, 1, 1)
        truth = np.float32(2 * np.pi) * field[None] * echo_times
        quality = {"two_pi_error_fraction": _two_pi_error_fraction(unwrapped, truth, brain),
                   "mcpc3ds_s": after_offset}
    peak_gib = _memory_gib("VmHWM")
    return {"seconds": seconds, "cpu_seconds": time.process_time(), "peak_rss_gib": peak_gib,
            "input_rss_gib": input_gib, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--echoes", type=int, default=9)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--no-skimage", action="store_true", help="skip scikit-image's unwrap_phase")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(Path(args.child[0]), args.child[1])))
        return

    from _head import realistic_head

    phantom, simulate_s = realistic_head(args.echoes, args.voxel_size)
    acquisition = phantom.acquisition
    last = args.echoes - 1
    single = ["romeo", "skimage"]
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("scikit-image is not installed: skipping unwrap_phase")
        single.remove("skimage")
    if args.no_skimage and "skimage" in single:
        single.remove("skimage")
    steps = [f"{method}:{echo}" for echo in sorted({0, last}) for method in single]
    steps += ["laplacian:0", "phase_stage"]
    shape = "x".join(str(n) for n in acquisition.spatial_shape)
    print(f"phantom {shape} at {args.voxel_size} mm, {args.echoes} echoes (simulated in {simulate_s:.0f} s)")
    with tempfile.TemporaryDirectory() as folder:
        for name, array in (("magnitude", acquisition.magnitude), ("phase", acquisition.phase),
                            ("brain", phantom.brain_mask), ("offset", phantom.phase_offset_rad),
                            ("field", phantom.total_field_hz)):
            np.save(Path(folder) / f"{name}.npy", array)
        (Path(folder) / "meta.json").write_text(json.dumps({
            "echo_times_s": list(acquisition.echo_times_s), "voxel_size_mm": list(acquisition.voxel_size_mm)}))
        del phantom, acquisition
        for step in steps:
            completed = subprocess.run([sys.executable, __file__, "--child", folder, step],
                                       capture_output=True, text=True, check=True)
            report = json.loads(completed.stdout.strip().splitlines()[-1])
            extra = ", ".join(f"{k} {v:.3g}" for k, v in report.items()
                              if k not in ("seconds", "cpu_seconds", "peak_rss_gib", "input_rss_gib"))
            label = step.replace(":", " echo ") if ":" in step else step
            print(f"  {label:<17} {report['seconds']:6.1f} s (process CPU {report['cpu_seconds']:5.1f} s)   "
                  f"peak memory {report['peak_rss_gib']:5.2f} GiB (inputs {report['input_rss_gib']:.2f} GiB)   "
                  f"{extra}")


if __name__ == "__main__":
    main()
