"""Automatic deep grey matter ROIs (issue 14): atlas registration on heads that are not the template.

    python benchmarks/bench_rois.py                              # the warped suite heads
    python benchmarks/bench_rois.py --cases warped_small_3mm     # seconds once generated
    python benchmarks/bench_rois.py --core-depths 0,0.5,0.75,1   # sweep the core depth
    python benchmarks/bench_rois.py --mask truth --chi-channel   # variants of the inputs
    python benchmarks/bench_rois.py --affine-only                # no nonlinear step (what an affine gives)
    python benchmarks/bench_rois.py --cases axial_1mm_3T         # the template's own head (inverse crime)
    python benchmarks/bench_rois.py --json out.json --markdown out.md

The suite's realistic heads are built from the MNI152 2009 template and the
AAL3 labels, so registering them back is unrealistically easy; the warped
cases (``QSMLib.phantom.suite.WARPED_CASES``) are other subjects: each the
realistic head under its own smooth random deformation (3-4 mm RMS), scaling,
rotation and shift, with a receive-coil bias on the magnitude. Their truth
labels are the deformed AAL3 structures.

For each case the pipeline runs first (``--preset``, default consensus;
its brain mask and chi are cached in benchmarks/results/rois_cache), then
:func:`QSMLib.rois.atlas_rois` on its magnitude and mask. Printed per case and
structure (left/right):

- ``dice``: of the automatic ROI with the true whole structure;
- ``gap``: true susceptibility averaged over the automatic ROI minus over the
  true structure's core (ppb), the core being the true structure less its
  outermost voxel layer (6-connected erosion), as an expert draws an ROI;
- ``whole``: the same for the true whole structure (what a perfect
  registration without core selection gives);
- ``chi``: reconstructed chi over the automatic ROI minus true chi over the
  core (ppb; includes the reconstruction's own error; both referenced to
  their brain means);
- voxels of the automatic ROI and of the true core;

and per case the registration time (wall and CPU seconds of this process),
the affine mutual information and the final similarity. Then per structure
the mean and worst |gap| over the cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import scipy.ndimage as ndi

# benchmark this checkout, whatever QSMLib the environment has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from QSMLib.phantom.suite import WARPED_CASES, SuiteCase, cache_key, load_case, spec_by_name  # noqa: E402
from QSMLib.pipeline import PRESETS, run_pipeline  # noqa: E402
from QSMLib.rois import (  # noqa: E402
    AAL3_STRUCTURES,
    ROI_NAMES,
    AtlasROIs,
    atlas_rois,
    core_depth_for,
    min_core_voxels,
)
from QSMLib.rois.labels import depth_on_grid  # noqa: E402
from QSMLib.rois.registration import register_to_template  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CASES = [name for name in WARPED_CASES if name != "warped_small_3mm"]


def pipeline_outputs(case: SuiteCase, preset: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """Brain mask, local mask and chi of the pipeline on a case (cached on disk)."""
    digest = hashlib.sha256(json.dumps(PRESETS[preset]().to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    path = cache_dir / f"{cache_key(case.spec)}-{preset}-{digest}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    result = run_pipeline(case.acquisition, PRESETS[preset]())
    outputs = {"mask": result.mask, "local_mask": result.local_mask, "chi": result.chi_ppm}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **outputs)
    temporary.replace(path)
    return outputs


def true_core(labels: np.ndarray, label: int) -> np.ndarray:
    """The true structure less its outermost voxel layer (an expert's core ROI)."""
    return ndi.binary_erosion(labels == label)


def evaluate(case: SuiteCase, auto: np.ndarray, chi: np.ndarray, local_mask: np.ndarray) -> list[dict[str, Any]]:
    """One row per ROI: Dice, gaps (ppb) and voxel counts."""
    scored = local_mask & case.brain_mask
    truth_brain_mean = float(case.chi_ppm[scored].mean())
    chi_brain_mean = float(chi[scored].mean())
    rows = []
    for label, name in ROI_NAMES.items():
        region = auto == label
        structure = case.labels == label
        core = true_core(case.labels, label)
        row: dict[str, Any] = {"roi": name, "voxels": int(region.sum()), "core_voxels": int(core.sum())}
        row["dice"] = float(2 * (region & structure).sum() / max(region.sum() + structure.sum(), 1))
        core_mean = float(case.chi_ppm[core].mean()) if core.any() else float("nan")
        row["gap_ppb"] = 1000 * (float(case.chi_ppm[region].mean()) - core_mean) if region.any() else float("nan")
        row["whole_ppb"] = 1000 * (float(case.chi_ppm[structure].mean()) - core_mean)
        inside = region & local_mask
        row["chi_ppb"] = (1000 * ((float(chi[inside].mean()) - chi_brain_mean) - (core_mean - truth_brain_mean))
                          if inside.any() else float("nan"))
        rows.append(row)
    return rows


def run_case(name: str, arguments: argparse.Namespace) -> dict[str, Any]:
    case = load_case(spec_by_name(name), arguments.cache_dir)
    if not case.has_truth:
        raise SystemExit(f"{name} has no ground truth")
    pipeline = pipeline_outputs(case, arguments.preset, Path(arguments.cache_dir).parent / "rois_cache")
    mask = case.brain_mask if arguments.mask == "truth" else pipeline["mask"]
    chi_channel = pipeline["chi"] if arguments.chi_channel else None
    acquisition = case.acquisition
    wall, cpu = time.perf_counter(), time.process_time()
    if arguments.affine_only:
        registration = register_to_template(acquisition.magnitude, acquisition.affine, mask, chi_ppm=chi_channel,
                                            demons_iterations=(0, 0))
        default_depth = core_depth_for(acquisition.voxel_size_mm)
        rois = AtlasROIs(depth_on_grid(registration.transform, acquisition.affine, acquisition.spatial_shape)
                         .labels(default_depth, min_core_voxels(acquisition.voxel_size_mm)),
                         dict(ROI_NAMES), default_depth, registration, time.perf_counter() - wall)
    else:
        rois = atlas_rois(acquisition.magnitude, acquisition.affine, mask, chi_ppm=chi_channel)
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    depths = [float(v) for v in (arguments.core_depths or "").split(",") if v.strip()]
    depths = sorted(set(depths) | {rois.core_depth_mm})
    depth = depth_on_grid(rois.registration.transform, acquisition.affine, acquisition.spatial_shape)
    by_depth = {}
    for core_depth in depths:
        labels = (rois.labels if core_depth == rois.core_depth_mm else
                  depth.labels(core_depth, min_core_voxels(acquisition.voxel_size_mm)))
        by_depth[core_depth] = evaluate(case, labels, pipeline["chi"], pipeline["local_mask"])
    return {"case": name, "voxel_mm": list(acquisition.voxel_size_mm), "timing": timing,
            "steps_s": rois.registration.seconds, "affine_mi": rois.registration.affine_metric,
            "similarity": rois.registration.similarity, "default_core_depth_mm": rois.core_depth_mm,
            "rows": {str(k): v for k, v in by_depth.items()}}


def _pair(rows: list[dict[str, Any]], structure: str, key: str, form: str) -> str:
    values = [r[key] for r in rows if r["roi"].rsplit("_", 1)[0] == structure]
    return "/".join(form.format(v) for v in values)


def tables(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        timing = result["timing"]
        lines.append(f"\n### {result['case']} ({'x'.join(f'{v:g}' for v in result['voxel_mm'])} mm): registration "
                     f"{timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU; affine MI "
                     f"{result['affine_mi']:.3f}, similarity {result['similarity']:.3f}")
        for depth, rows in result["rows"].items():
            lines.append(f"\ncore depth {float(depth):g} mm | dice L/R | gap ppb L/R | whole ppb L/R | chi ppb L/R "
                         "| voxels L/R | core voxels L/R")
            lines.append("|".join(["---"] * 7))
            for structure in AAL3_STRUCTURES:
                lines.append(" | ".join([
                    structure, _pair(rows, structure, "dice", "{:.2f}"), _pair(rows, structure, "gap_ppb", "{:+.1f}"),
                    _pair(rows, structure, "whole_ppb", "{:+.1f}"), _pair(rows, structure, "chi_ppb", "{:+.1f}"),
                    _pair(rows, structure, "voxels", "{}"), _pair(rows, structure, "core_voxels", "{}")]))
    depths = sorted({d for r in results for d in r["rows"]}, key=float)
    for depth in [None, *depths] if len(depths) > 1 else [None]:
        what = "each case's default core depth" if depth is None else f"core depth {float(depth):g} mm"
        lines.append(f"\nsummary over {len(results)} case(s), {what}: mean |gap| / worst |gap| ppb (over left "
                     "and right), mean Dice")
        lines.append("structure | mean abs gap | worst abs gap | mean dice")
        lines.append("---|---|---|---")
        for structure in AAL3_STRUCTURES:
            rows = [row for r in results
                    for row in r["rows"].get(str(r["default_core_depth_mm"]) if depth is None else depth, [])
                    if row["roi"].rsplit("_", 1)[0] == structure]
            gaps = np.abs([row["gap_ppb"] for row in rows])
            lines.append(f"{structure} | {np.nanmean(gaps):.1f} | {np.nanmax(gaps):.1f} | "
                         f"{np.mean([row['dice'] for row in rows]):.2f}")
    times = [r["timing"] for r in results]
    lines.append(f"\nregistration: wall {min(t['wall_s'] for t in times):.1f}-{max(t['wall_s'] for t in times):.1f} s, "
                 f"CPU {min(t['cpu_s'] for t in times):.1f}-{max(t['cpu_s'] for t in times):.1f} s")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated case names")
    parser.add_argument("--preset", default="consensus", help="pipeline preset for mask and chi (default consensus)")
    parser.add_argument("--mask", choices=("pipeline", "truth"), default="pipeline", help="brain mask used")
    parser.add_argument("--chi-channel", action="store_true", help="register with chi as a second channel")
    parser.add_argument("--affine-only", action="store_true", help="skip the nonlinear (demons) step")
    parser.add_argument("--core-depths", help="comma-separated core depths in mm (default: the voxel-size rule)")
    parser.add_argument("--cache-dir", default=str(RESULTS / "suite_cache"), help="folder of cached cases")
    parser.add_argument("--json", help="also write the results as JSON")
    parser.add_argument("--markdown", help="also write the tables as markdown")
    arguments = parser.parse_args(argv)
    results = []
    for name in [c.strip() for c in arguments.cases.split(",") if c.strip()]:
        results.append(run_case(name, arguments))
        print(tables(results[-1:]), flush=True)
    text = tables(results)
    print(text)
    if arguments.markdown:
        Path(arguments.markdown).write_text(text + "\n")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
