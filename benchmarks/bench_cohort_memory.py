"""Peak memory of one cohort task at a few sizes, and the memory model fitted to it.

    python benchmarks/bench_cohort_memory.py [--config consensus] [--voxel-sizes 2.0,1.5,1.0]
        [--echoes 5,9] [--inputs DIR]

``qsm bids`` sizes its local Dask cluster with
:meth:`QSMLib.batch.layout.Acquisition.memory_bytes`: ``TASK_BASE_BYTES +
voxels * (TASK_BYTES_PER_VOXEL + TASK_BYTES_PER_VOXEL_ECHO * echoes)``. This
benchmark measures what that model must cover. The head phantom (a 256 x 256 x
176 mm field of view, so 1 mm gives the 256 x 256 x 176 matrix) is simulated
at each voxel size and written as a BIDS dataset (one 3D file per echo, as
``qsm dicom2bids`` writes them); then one task
(:func:`QSMLib.batch.tasks.process_acquisition`, the body of a Dask task,
with the QC figure, sidecars and provenance) runs in a fresh process per size
and echo count, which reports its own peak resident memory (``VmHWM``). The
model is fitted by least squares to those peaks; the constants to use are
the fit with 25 % added, which the table compares with every measurement.
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

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


def _child(bids_root: str, out_dir: str, config_name: str) -> None:
    from QSMLib.batch.discovery import find_acquisitions
    from QSMLib.batch.layout import WORK_FOLDER
    from QSMLib.batch.tasks import process_acquisition
    from QSMLib.pipeline import load_config

    [acquisition] = find_acquisitions(bids_root)
    (Path(out_dir) / WORK_FOLDER).mkdir(parents=True)  # as run_cohort prepares the derivatives folder
    began = time.perf_counter()
    record = process_acquisition(acquisition, out_dir, load_config(config_name).to_dict())
    if record["status"] != "processed":
        raise SystemExit(f"the task failed: {record['reason']}")
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_bytes": peak, "seconds": time.perf_counter() - began,
                      "voxels": acquisition.n_voxels, "echoes": acquisition.n_echoes}))


def _simulate(voxel_size_mm: float, echoes: int):
    """The benchmark head (a 256 x 256 x 176 mm field of view, echoes every 4 ms) at ``voxel_size_mm``."""
    from QSMLib.phantom import simulate_head

    echo_times = tuple(0.004 + 0.004 * n for n in range(echoes))
    return simulate_head(voxel_size_mm=(voxel_size_mm,) * 3, fov_mm=(256.0, 256.0, 176.0),
                         echo_times_s=echo_times).acquisition


def _write_dataset(root: Path, acquisition, echoes: int) -> None:
    """A one-subject BIDS dataset of the first ``echoes`` echoes of ``acquisition``."""
    from QSMLib.io.nifti import write_volume

    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"}))
    for echo in range(echoes):
        for part, data in (("mag", acquisition.magnitude), ("phase", acquisition.phase)):
            stem = anat / f"sub-01_echo-{echo + 1}_part-{part}_MEGRE"
            write_volume(stem.with_name(stem.name + ".nii.gz"), data[echo], acquisition.affine)
            stem.with_name(stem.name + ".json").write_text(json.dumps(
                {"EchoTime": acquisition.echo_times_s[echo], "MagneticFieldStrength": acquisition.b0_tesla}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="consensus")
    parser.add_argument("--voxel-sizes", default="2.0,1.5,1.0", help="mm, comma-separated")
    parser.add_argument("--echoes", default="5,9", help="echo counts, comma-separated")
    parser.add_argument("--inputs", help="folder for the simulated datasets (kept and reused)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import numpy as np

    sys.path.insert(0, str(REPO))
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    echo_counts = sorted(int(e) for e in args.echoes.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(args.inputs) if args.inputs else Path(scratch)
        for voxel_size in (float(v) for v in args.voxel_sizes.split(",")):
            roots = {echoes: inputs / f"head_{voxel_size:g}mm_{echoes}echoes" for echoes in echo_counts}
            missing = [echoes for echoes, root in roots.items() if not (root / "sub-01").is_dir()]
            if missing:
                acquisition = _simulate(voxel_size, max(echo_counts))
                for echoes in missing:
                    _write_dataset(roots[echoes], acquisition, echoes)
                del acquisition
            for echoes, root in roots.items():
                out = Path(scratch) / f"out_{voxel_size:g}_{echoes}"
                completed = subprocess.run(
                    [sys.executable, __file__, "--child", str(root), str(out), args.config], cwd=REPO,
                    capture_output=True, text=True, env=environment)
                if completed.returncode != 0:
                    raise SystemExit(completed.stderr[-3000:])
                rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
                print(f"  {voxel_size:g} mm, {echoes} echoes: {rows[-1]['voxels'] / 1e6:.2f} M voxels, peak "
                      f"{rows[-1]['peak_bytes'] / MIB:.0f} MiB, {rows[-1]['seconds']:.0f} s", flush=True)
    voxels = np.array([r["voxels"] for r in rows], float)
    echoes = np.array([r["echoes"] for r in rows], float)
    peaks = np.array([r["peak_bytes"] for r in rows], float)
    design = np.stack([np.ones_like(voxels), voxels, voxels * echoes], axis=1)
    base, per_voxel, per_voxel_echo = np.linalg.lstsq(design, peaks, rcond=None)[0]
    margin = 1.25
    constants = (int(np.ceil(margin * max(base, 0) / MIB)) * MIB, int(np.ceil(margin * per_voxel)),
                 int(np.ceil(margin * max(per_voxel_echo, 0))))
    print(f"\nconfig {args.config!r}: fit peak = {base / MIB:.0f} MiB + voxels x ({per_voxel:.0f} + "
          f"{per_voxel_echo:.1f} x echoes) B")
    print(f"with 25 % added: TASK_BASE_BYTES = {constants[0] // MIB} * 2**20, TASK_BYTES_PER_VOXEL = "
          f"{constants[1]}, TASK_BYTES_PER_VOXEL_ECHO = {constants[2]}")
    print(f"\n  {'M voxels':>8} {'echoes':>6} {'measured MiB':>13} {'model MiB':>10}")
    for v, e, p in zip(voxels, echoes, peaks):
        model = constants[0] + v * (constants[1] + constants[2] * e)
        print(f"  {v / 1e6:8.2f} {e:6.0f} {p / MIB:13.0f} {model / MIB:10.0f}")


if __name__ == "__main__":
    main()
