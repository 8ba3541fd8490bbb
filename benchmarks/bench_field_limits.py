"""What limits the default inversion on a suite case: the field's errors, split by scale, against the truth.

    python benchmarks/bench_field_limits.py [--cases qsmforward_7T_kspace,noisy_1p5mm_3echo]
        [--cache-dir DIR] [--scale-mm 4]

The default pipeline runs on each case, and TFI's inputs (the total field, mask, weights, noise and
magnitude the pipeline hands it) are kept. TFI then runs again on the same inputs with the total field
replaced by: the exact total field; the pipeline's field less the fine part of its error (what a
Gaussian of ``--scale-mm`` leaves, normalised over the mask); less its smooth part. The table gives
chi NRMSE and the worst deep grey matter ROI error of each, on the voxels the solve reports in the true
brain (as ``bench_accuracy.py`` scores), and the RMS of the field error (all, smooth, fine) and of the
true local field in bands of distance from the mask's edge. A large gain from removing the fine part
where it sits at the edge says the edge field limits the case; a gain that needs the exact field says
the error is everywhere (noise).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import chi_scores  # noqa: E402

from QSMLib.contract import Method  # noqa: E402
from QSMLib.inversion.tfi import tfi  # noqa: E402
from QSMLib.phantom.suite import SuiteCase, load_case  # noqa: E402
from QSMLib.pipeline import PRESETS, REGISTRY, run_pipeline  # noqa: E402

#: Distance bands from the mask's edge, mm.
BANDS_MM = ((0, 3), (3, 6), (6, 10), (10, 20), (20, 1000))


def tfi_inputs(case: SuiteCase) -> dict[str, Any]:
    """Run the default pipeline on ``case`` and return what it handed TFI (field, mask, voxel size, keywords)."""
    entry = REGISTRY["inversion"]["tfi"]
    captured: dict[str, Any] = {}

    @functools.wraps(entry.function)
    def keep(total_field_hz: np.ndarray, mask: np.ndarray, voxel_size_mm: Any, **keywords: Any) -> Any:
        captured.update(total_field_hz=total_field_hz, mask=mask, voxel_size_mm=tuple(voxel_size_mm),
                        keywords={k: v for k, v in keywords.items() if k not in ("progress", "cancel")})
        return entry.function(total_field_hz, mask, voxel_size_mm, **keywords)

    REGISTRY["inversion"]["tfi"] = Method(keep, inputs=entry.inputs, takes_total_field=entry.takes_total_field)
    try:
        run_pipeline(case.acquisition, PRESETS["consensus"]())
    finally:
        REGISTRY["inversion"]["tfi"] = entry
    return captured


def split_error(error_hz: np.ndarray, mask: np.ndarray, voxel_size_mm: Any, scale_mm: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """The smooth part of ``error_hz`` in ``mask`` (Gaussian of ``scale_mm``, normalised over the mask) and the rest."""
    sigma = [scale_mm / float(v) for v in voxel_size_mm]
    inside = np.where(mask, error_hz, 0).astype(np.float64)
    weights = ndi.gaussian_filter(mask.astype(np.float64), sigma)
    smooth = np.where(mask, ndi.gaussian_filter(inside, sigma) / np.maximum(weights, 1e-6), 0)
    return smooth, inside - smooth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="qsmforward_7T_kspace,noisy_1p5mm_3echo")
    parser.add_argument("--cache-dir", help="folder of cached suite cases")
    parser.add_argument("--scale-mm", type=float, default=4.0, help="Gaussian that splits smooth from fine, mm")
    args = parser.parse_args()
    for name in args.cases.split(","):
        case = load_case(name, args.cache_dir)
        inputs = tfi_inputs(case)
        mask, voxel = inputs["mask"], inputs["voxel_size_mm"]
        error = inputs["total_field_hz"] - case.total_field_hz
        error = np.where(mask, error - np.median(error[mask]), 0)  # a constant is no error
        smooth, fine = split_error(error, mask, voxel, args.scale_mm)
        print(f"\n{name}: field error by distance from the mask's edge (RMS, Hz)")
        print("| band mm | voxels | error | smooth part | fine part | true local field |\n|---|---|---|---|---|---|")
        distance = ndi.distance_transform_edt(mask, sampling=voxel)
        for low, high in BANDS_MM:
            band = mask & (distance > low) & (distance <= high)
            if band.any():
                rms = [float(np.sqrt(np.mean(np.square(m[band], dtype=np.float64))))
                       for m in (error, smooth, fine, case.local_field_hz)]
                cells = " | ".join(f"{v:.2f}" for v in rms)
                print(f"| {low}-{high if high < 1000 else ''} | {int(band.sum())} | {cells} |")
        print("\n| TFI's total field | chi NRMSE % | worst DGM ROI error ppb |\n|---|---|---|")
        fields = {"the pipeline's (default)": inputs["total_field_hz"], "exact": case.total_field_hz,
                  "the pipeline's less the fine error": inputs["total_field_hz"] - fine,
                  "the pipeline's less the smooth error": inputs["total_field_hz"] - smooth}
        for label, field in fields.items():
            result = tfi(np.asarray(field, np.float32), mask, voxel, **inputs["keywords"])
            scores = chi_scores(result.chi_ppm, case, result.mask & case.brain_mask)
            print(f"| {label} | {scores['nrmse']:.1f} | {scores['roi_abs_max_ppb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
