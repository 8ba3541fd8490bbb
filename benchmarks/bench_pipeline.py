"""Time every stage and the whole pipeline on a realistic head; report peak memory.

    python benchmarks/bench_pipeline.py [--config consensus] [--echoes 9] [--voxel-size 1.0]

The phantom (256 x 256 x 176 voxels at 1 mm, 9 echoes by default) is simulated
first and saved; the pipeline then runs in a fresh process, so the peak
resident memory it reports is the pipeline's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _child(folder: Path, config_name: str) -> None:
    from QSMLib.acquisition import MultiEchoGRE
    from QSMLib.pipeline import load_config, run_pipeline

    meta = json.loads((folder / "meta.json").read_text())
    acquisition = MultiEchoGRE(np.load(folder / "magnitude.npy"), np.load(folder / "phase.npy"),
                               meta["echo_times_s"], meta["b0_tesla"], affine=np.array(meta["affine"]))
    began = time.perf_counter()
    result = run_pipeline(acquisition, load_config(config_name))
    total = time.perf_counter() - began
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"total_s": total, "stages_s": result.timings_s, "peak_rss_gib": peak_gib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="consensus")
    parser.add_argument("--echoes", type=int, default=9)
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child), args.config)
        return

    from _head import realistic_head

    phantom, simulate_s = realistic_head(args.echoes, args.voxel_size)
    acquisition = phantom.acquisition
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "magnitude.npy", acquisition.magnitude)
        np.save(Path(folder) / "phase.npy", acquisition.phase)
        (Path(folder) / "meta.json").write_text(json.dumps({
            "echo_times_s": list(acquisition.echo_times_s), "b0_tesla": acquisition.b0_tesla,
            "affine": acquisition.affine.tolist()}))
        del phantom, acquisition
        completed = subprocess.run([sys.executable, __file__, "--child", folder, "--config", args.config],
                                   capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"phantom {256}x{256}x{176} at {args.voxel_size} mm, {args.echoes} echoes, config {args.config!r}")
    print(f"  phantom simulation: {simulate_s:6.1f} s (not part of the pipeline)")
    for stage, seconds in report["stages_s"].items():
        print(f"  {stage:<14} {seconds:6.1f} s")
    print(f"  {'whole pipeline':<14} {report['total_s']:6.1f} s, peak memory {report['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
