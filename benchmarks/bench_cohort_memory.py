"""Peak memory of one cohort task on heads, slabs and cropped heads, and the memory model chosen to cover it.

    python benchmarks/bench_cohort_memory.py [--config consensus[,fast,...]] [--voxel-sizes 2.0,1.5,1.0]
        [--echoes 5,9] [--inputs DIR] [--cases NAME[:CROP],... --cache-dir DIR]

``qsm bids`` sizes its local Dask cluster with
:meth:`QSMLib.batch.layout.Acquisition.memory_bytes`: ``base + voxels *
(per_voxel + per_voxel_echo * echoes) + frame * per_frame_voxel``, the
constants ``TASK_MEMORY_BYTES`` keyed by whose frame ``frame`` counts: it
estimates the voxels of the inversion's frame from the grid alone
(:func:`QSMLib.inversion.tfi.frame_voxels_estimate`: TFI's, on a slab several
times the scan's voxels, or SS-TV's for the ``fast`` preset). This benchmark
measures what that model must cover, for each configuration of ``--config``.
The head phantom (a 256 x 256 x 176 mm field of view, so
1 mm gives the 256 x 256 x 176 matrix) is simulated at each voxel size, and
each validation suite case of ``--cases`` is loaded (``NAME:CROP``: cropped to
its brain's box and CROP voxels, a field of view that cuts the brain); each is
written as a BIDS dataset (one 3D file per echo, as ``qsm dicom2bids`` writes
them); then one task (:func:`QSMLib.batch.tasks.process_acquisition`, the body
of a Dask task, with the QC figure, sidecars and provenance) runs in a fresh
process per dataset, which reports its own peak resident memory (``VmHWM``).
The constants printed for each configuration are the smallest (in the sum
over its datasets of estimate over peak, a linear programme) that cover every
peak by 25 %, with each voxel and echo costing what the runs with more
echoes measured over those with fewer on the largest grid that has both.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

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
    provenance = json.loads((Path(out_dir) / acquisition.output_path("provenance")).read_text())
    solved_on = provenance["chosen_parameters"].get("zero_fill", {}).get("solving_voxel_size_mm")
    print(json.dumps({"peak_bytes": peak, "seconds": time.perf_counter() - began, "voxels": acquisition.n_voxels,
                      "echoes": acquisition.n_echoes, "solving_voxel_mm": max(solved_on) if solved_on else None}))


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


def _case_acquisition(spec: str, cache_dir: str):
    """A suite case's acquisition (``NAME``), or cropped to its brain's box and CROP voxels (``NAME:CROP``)."""
    from QSMLib._fft import mask_bounding_box
    from QSMLib.acquisition import MultiEchoGRE
    from QSMLib.phantom.suite import load_case

    name, _, crop = spec.partition(":")
    case = load_case(name, cache_dir)
    acquisition = case.acquisition
    if not crop:
        return acquisition
    spatial = mask_bounding_box(case.brain_mask, [int(crop)] * 3)
    box = (slice(None), *spatial)
    affine = acquisition.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ [part.start for part in spatial]
    return MultiEchoGRE(acquisition.magnitude[box].copy(), acquisition.phase[box].copy(), acquisition.echo_times_s,
                        acquisition.b0_tesla, affine=affine)


def _datasets(args: argparse.Namespace, inputs: Path) -> list[tuple[str, Path]]:
    """(label, BIDS root) of every dataset to measure, written to ``inputs`` unless already there."""
    datasets = []
    echo_counts = sorted(int(e) for e in args.echoes.split(","))
    for voxel_size in (float(v) for v in args.voxel_sizes.split(",") if v):
        roots = {echoes: inputs / f"head_{voxel_size:g}mm_{echoes}echoes" for echoes in echo_counts}
        missing = [echoes for echoes, root in roots.items() if not (root / "sub-01").is_dir()]
        if missing:
            acquisition = _simulate(voxel_size, max(echo_counts))
            for echoes in missing:
                _write_dataset(roots[echoes], acquisition, echoes)
            del acquisition
        datasets += [(f"head {voxel_size:g} mm", root) for root in roots.values()]
    for spec in (s for s in (args.cases or "").split(",") if s):
        root = inputs / f"case_{spec.replace(':', '_crop')}"
        if not (root / "sub-01").is_dir():
            acquisition = _case_acquisition(spec, args.cache_dir)
            _write_dataset(root, acquisition, acquisition.n_echoes)
            del acquisition
        datasets.append((spec, root))
    return datasets


def _fit(terms: np.ndarray, peaks: np.ndarray, labels: list[str], cover: float) -> np.ndarray:
    """Constants (base, per voxel, per voxel and echo, per frame voxel) covering every peak by ``cover``."""
    import numpy as np
    from scipy.optimize import linprog

    # each voxel and echo costs what more echoes measured over fewer on the largest grid that has both (where
    # the fixed part of a run weighs least): left free above that, the programme loads the echoes with what the
    # other terms cost (fast: 0 B per voxel and 35 B per voxel and echo, the 1 mm 9-echo head covered by 139 %)
    slopes = [(terms[i, 0], (peaks[j] - peaks[i]) / (terms[j, 1] - terms[i, 1]))
              for i in range(len(labels)) for j in range(len(labels))
              if labels[i] == labels[j] and terms[j, 1] > terms[i, 1] and terms[j, 0] == terms[i, 0]]
    per_echo = max(0.0, max(slopes)[1]) if slopes else 0.0
    design = np.column_stack([np.ones(len(peaks)), terms])
    result = linprog(c=(design / peaks[:, None]).sum(axis=0), A_ub=-design, b_ub=-cover * peaks,
                     bounds=[(0, None), (0, None), (per_echo, per_echo if slopes else None), (0, None)])
    if not result.success:
        raise SystemExit(f"no constants cover every peak: {result.message}")
    return np.ceil(result.x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="consensus")
    parser.add_argument("--voxel-sizes", default="2.0,1.5,1.0", help="mm, comma-separated (empty: none)")
    parser.add_argument("--echoes", default="5,9", help="echo counts, comma-separated")
    parser.add_argument("--cases", help="validation suite cases, NAME or NAME:CROP, comma-separated")
    parser.add_argument("--cache-dir", help="the suite's case cache (QSMLib.phantom.suite.load_case)")
    parser.add_argument("--inputs", help="folder for the written datasets (kept and reused)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import numpy as np

    sys.path.insert(0, str(REPO))
    from QSMLib.batch.discovery import find_acquisitions
    from QSMLib.batch.layout import frame_method
    from QSMLib.pipeline import load_config

    config_names = [name for name in args.config.split(",") if name]
    inversions = {name: load_config(name).to_dict()["inversion"]["method"] for name in config_names}
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    labels, terms, peaks = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(args.inputs) if args.inputs else Path(scratch)
        datasets = _datasets(args, inputs)
        for config_name in config_names:
            for label, root in datasets:
                out = Path(scratch) / f"out_{len(labels)}"
                completed = subprocess.run(
                    [sys.executable, __file__, "--child", str(root), str(out), config_name], cwd=REPO,
                    capture_output=True, text=True, env=environment)
                if completed.returncode != 0:
                    raise SystemExit(completed.stderr[-3000:])
                row = json.loads(completed.stdout.strip().splitlines()[-1])
                [acquisition] = find_acquisitions(root)
                labels.append(f"{config_name}: {label}")
                # the model's terms for the grid the task solved on (the estimate itself takes "auto" as
                # zero-filling every coarse scan, which only the images can tell)
                terms.append(acquisition.memory_terms(row["solving_voxel_mm"], inversions[config_name]))
                peaks.append(row["peak_bytes"])
                print(f"  {labels[-1]}: {row['voxels'] / 1e6:.2f} M voxels, {row['echoes']} echoes, frame "
                      f"{terms[-1][2] / 1e6:.2f} M, peak {row['peak_bytes'] / MIB:.0f} MiB, {row['seconds']:.0f} s",
                      flush=True)
    for config_name in config_names:
        rows = [i for i, label in enumerate(labels) if label.startswith(f"{config_name}: ")]
        terms_array, peaks_array = np.array([terms[i] for i in rows], float), np.array([peaks[i] for i in rows], float)
        constants = _fit(terms_array, peaks_array, [labels[i] for i in rows], 1.25)
        frame = frame_method(inversions[config_name])
        print(f"\nconfig {config_name!r}, covering every peak by 25 %: TASK_MEMORY_BYTES[{frame!r}] = "
              f"({int(np.ceil(constants[0] / MIB))} * 2**20, {int(constants[1])}, {int(constants[2])}, "
              f"{int(constants[3])})")
        print(f"\n  {'dataset':<48} {'M voxels':>8} {'frame M':>8} {'measured MiB':>13} {'model MiB':>10} "
              f"{'cover':>6}")
        for i, term, peak in zip(rows, terms_array, peaks_array):
            model = constants @ [1.0, *term]
            print(f"  {labels[i]:<48} {term[0] / 1e6:8.2f} {term[2] / 1e6:8.2f} {peak / MIB:13.0f} "
                  f"{model / MIB:10.0f} {100 * (model / peak - 1):+5.0f} %")

if __name__ == "__main__":
    main()
