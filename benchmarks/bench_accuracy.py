"""Accuracy of every stage and method on the validation suite (issue 9).

    python benchmarks/bench_accuracy.py                          # every case, stage and method
    python benchmarks/bench_accuracy.py --cases axial_1mm_3T --stages inversion --methods tv,nltv
    python benchmarks/bench_accuracy.py --param tv.regularization=3e-4 --methods tv --stages inversion
    python benchmarks/bench_accuracy.py --stages pipeline --preset fast --param tv.tolerance=0.01
    python benchmarks/bench_accuracy.py --small                  # the small test cases (seconds)
    python benchmarks/bench_accuracy.py --markdown out.md --json out.json

Cases (QSMLib.phantom.suite.CASES) are generated once and cached in
benchmarks/results/suite_cache (keyed by their parameters and the phantom
code). For each case with ground truth it prints:

- ``pipeline``: the whole pipeline from raw phase (``--preset``, default
  consensus): total-field error (Hz, RMS after removing the median offset,
  inside the brain and in a 3 mm band at the brain edge; max and count of
  voxels off by more than 20 Hz there), mask Dice, local-field NRMSE, chi
  metrics and deep grey matter ROI errors;
- ``background``: every registered background method, and ``tfi_field`` (the
  local field the default single-step inversion implies, :func:`tfi_field`),
  from the exact total field with the true brain mask (``exact``) and from
  the pipeline's total field and mask (``pipeline``): local-field NRMSE (%)
  on the valid brain voxels, and the share of the brain kept;
- ``inversion``: every registered inversion method from the exact local field
  (``exact``), the exact local field plus the echo fit's noise (``noisy``,
  with its reliability weight; it holds the simulated partial volumes at the
  brain's surface too), plus the echo fit of thermal noise alone at the scan's
  own noise level (``thermal``) and the pipeline's local field
  (``pipeline``): chi NRMSE, detrended NRMSE, HFEN (%), XSIM, correlation, the
  ROI slope and every deep grey matter ROI error (ppb), with their largest and
  mean absolute value and how many miss ``ROI_TARGET_PPB`` (10 ppb).

With every chi it also prints the detrended NRMSE per tissue class as the QSM
challenge 2.0 and QSM-CI score it (:data:`TISSUE_CLASSES`: tissue, blood and
deep grey matter). ``--cases`` also takes the slabs of
``QSMLib.phantom.suite.SLAB_CASES``, the other subjects of ``WARPED_CASES``,
the box-averaged twins of ``TWIN_CASES``, the held-out heads of ``HELDOUT_CASES``
and the unusual acquisitions of ``STRESS_CASES``.

Chi and fields are compared on the voxels where both are defined (true
brain mask and the method's mask), each map demeaned there (ROI means are
referenced to that mean). Then per stage, input and method: mean and worst
case over the cases. The in-vivo crop (no truth) gets plausibility numbers
only. Methods come from the registries, so new ones appear automatically.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import scipy.ndimage as ndi

# benchmark this checkout, whatever QSMLib the environment has installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from QSMLib import _fft, metrics  # noqa: E402
from QSMLib._morphology import erode  # noqa: E402
from QSMLib.background import METHODS as BACKGROUND_REGISTRY  # noqa: E402
from QSMLib.background._smv import smv_balls  # noqa: E402
from QSMLib.background.resharp import default_radius_mm  # noqa: E402
from QSMLib.contract import BackgroundResult, Method  # noqa: E402
from QSMLib.fieldmap import weighted_linear  # noqa: E402
from QSMLib.inversion import METHODS as INVERSION_METHODS  # noqa: E402
from QSMLib.phantom.realistic import REALISTIC_DEEP_GREY_MATTER  # noqa: E402
from QSMLib.phantom.suite import CASES, SMALL_CASES, SuiteCase, load_case  # noqa: E402
from QSMLib.pipeline import REGISTRY, PipelineConfig, load_config, run_pipeline, tissue_field_hz  # noqa: E402

CACHE = Path(__file__).resolve().parent / "results" / "suite_cache"
STAGES = ("pipeline", "background", "inversion")
EDGE_BAND_MM = 3.0
# Background methods keep different shares of the brain (PDF all of it, RESHARP 75-87 %), and their errors gather
# at its edge: their local fields are also scored on the voxels deeper than this, which every method keeps.
DEEP_MM = 10.0
FIELD_OUTLIER_HZ = 20.0
#: Issue 9's target for every deep grey matter ROI mean (ppb): the rows count the ROIs that miss it.
ROI_TARGET_PPB = 10.0
CHI_METRICS = ("nrmse", "detrended_nrmse", "hfen", "xsim", "xsim_qsm_ci", "correlation", "roi_slope",
               "roi_abs_max_ppb", "roi_abs_mean_ppb", "rois_over_target")
# The QSM reconstruction challenge 2.0's (and QSM-CI's) tissue classes, scored by detrended NRMSE: tissue (white
# and grey matter and thalamus), blood (the veins dilated by one voxel in 26-connectivity) and deep grey matter.
TISSUE_CLASSES = {
    "tissue": ("white_matter", "grey_matter", "thalamus_left", "thalamus_right"),
    "blood": ("vein",),
    "dgm": tuple(REALISTIC_DEEP_GREY_MATTER.values()),
}
CLASS_METRICS = tuple(f"nrmse_{name}" for name in TISSUE_CLASSES)


def tfi_field(total_field_hz: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float], *,
              b0_direction: Sequence[float], b0_tesla: float, magnitude: Optional[np.ndarray] = None,
              field_weight: Optional[np.ndarray] = None, field_sd_hz: Optional[np.ndarray] = None,
              **parameters: Any) -> BackgroundResult:
    """The local field the default single-step inversion implies, scored as a background removal.

    TFI (the ``consensus`` preset's inversion) on the whole mask (``edge_mm=0``), then the field (Hz) of its
    susceptibility inside the mask, on the voxels where RESHARP's default ball (:func:`default_radius_mm`)
    fits in the mask and the field of view: RESHARP's own voxels, so that the two rows compare on the same
    brain. Library code keeps background removal free of dipole inversion (Testing/test_architecture.py);
    this row lives here.
    """
    result = INVERSION_METHODS["tfi"](total_field_hz, mask, voxel_size_mm, b0_direction=b0_direction,
                                      b0_tesla=b0_tesla, magnitude=magnitude, field_weight=field_weight,
                                      field_sd_hz=field_sd_hz, edge_mm=0.0, **parameters)
    local = tissue_field_hz(result.chi_ppm, mask, voxel_size_mm, b0_direction, b0_tesla)
    box, _, balls = smv_balls(mask, voxel_size_mm, [default_radius_mm(voxel_size_mm)])
    valid = np.zeros(mask.shape, dtype=bool)
    valid[box] = _fft.crop(balls[0][1], tuple(s.stop - s.start for s in box))
    return BackgroundResult(np.where(valid, local, 0).astype(np.float32), valid, result.parameters)


#: The background stage's rows: every registered method, and the local field that TFI implies.
BACKGROUND_METHODS = {**BACKGROUND_REGISTRY,
                      "tfi_field": Method(tfi_field, inputs=("b0_direction", "b0_tesla", "magnitude", "field_weight",
                                                              "field_sd_hz"))}


def _function(entry: Any) -> Callable[..., Any]:
    """The plain function of a registry entry (a function, or a contract ``Method``)."""
    return getattr(entry, "function", entry)


def call_method(entry: Any, field_hz: np.ndarray, mask: np.ndarray, voxel_size_mm, available: dict,
                parameters: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run one registry entry with the pipeline inputs it takes; normalise the result.

    Returns (map, mask, chosen parameters): the local field and its mask for
    background methods, chi and the input mask for inversion methods. Old
    tuple results and the contract's BackgroundResult/InversionResult are
    both understood.
    """
    function = _function(entry)
    accepted = inspect.signature(function).parameters
    declared = getattr(entry, "inputs", None)
    names = set(declared) if declared is not None else set(accepted)
    keyword = {name for name, p in accepted.items() if p.kind == p.KEYWORD_ONLY}
    inputs = {k: v for k, v in available.items() if k in names and k in keyword}
    result = function(field_hz, mask, tuple(voxel_size_mm), **inputs, **parameters)
    if hasattr(result, "local_field_hz"):
        return result.local_field_hz, result.mask, dict(getattr(result, "parameters", {}) or {})
    if hasattr(result, "chi_ppm"):
        valid = mask if getattr(result, "mask", None) is None else result.mask
        return result.chi_ppm, valid, dict(getattr(result, "parameters", {}) or {})
    if isinstance(result, tuple):
        return result[0], result[1], {}
    return result, mask, {}


def method_inputs(case: SuiteCase) -> dict[str, Any]:
    """The pipeline inputs a stage method may take, from the case's acquisition (no weight or noise map)."""
    acquisition = case.acquisition
    return {"b0_direction": tuple(acquisition.b0_direction), "b0_tesla": acquisition.b0_tesla,
            "magnitude": acquisition.magnitude, "echo_times_s": acquisition.echo_times_s,
            "voxel_size_mm": tuple(acquisition.voxel_size_mm)}


def fitted_echoes(acquisition: Any) -> list[int]:
    """The echoes the benchmark's noise inputs fit: all of them, or a bipolar acquisition's odd ones (the even
    ones carry the readout error)."""
    return list(range(0, acquisition.n_echoes, 2 if acquisition.bipolar else 1))


def echo_fit_noise(case: SuiteCase) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The echo fit's field noise (Hz) and reliability weight, from phase unwrapped with the true field.

    Each echo is unwrapped against echo 1 plus the true field's phase
    evolution, then fitted with an intercept (the phase offset); bipolar
    acquisitions use their odd echoes only (the even ones carry the readout
    error). The noise is the fit minus the true total field; the fit's own noise SD
    map (``field_sd_hz``, from its residuals) comes with it, as the pipeline
    passes it.
    """
    acquisition = case.acquisition
    echoes = fitted_echoes(acquisition)
    times = np.asarray(acquisition.echo_times_s, np.float32)[echoes]
    phase = acquisition.phase[echoes] * np.float32(acquisition.phase_sign)
    model = phase[0][None] + np.float32(2 * np.pi) * case.total_field_hz[None] * (times - times[0]).reshape(-1, 1, 1, 1)
    unwrapped = phase + np.float32(2 * np.pi) * np.round((model - phase) / np.float32(2 * np.pi))
    fitted, maps = weighted_linear(unwrapped, acquisition.magnitude[echoes], times, mask=case.brain_mask)
    return (fitted - case.total_field_hz).astype(np.float32), maps["field_weight"].astype(np.float32), maps.get(
        "field_sd_hz")


#: Width (voxels) of the cubes at the field of view's eight corners whose magnitude gives the noise level.
NOISE_CORNER_VOXELS = 6
#: Standard deviation over mean of a Rayleigh (pure noise) magnitude, ``sqrt(4 / pi - 1)``.
_RAYLEIGH_SD_PER_MEAN = math.sqrt(4.0 / math.pi - 1.0)


def thermal_noise(case: SuiteCase, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The echo fit of the scan's thermal noise alone (Hz), with its reliability weight and noise map.

    Complex Gaussian noise at each echo's own level (sigma from the
    magnitude in the field of view's corners, which must be air: their
    Rayleigh mean is ``sigma sqrt(pi / 2)``) is added to the case's
    magnitude, and the phase of the sum is fitted against echo time with an
    intercept, on the echoes :func:`fitted_echoes` picks. Unlike
    :func:`echo_fit_noise` it holds no model error (partial volumes at the
    brain's surface): it is the noise a perfect field model would see, whose
    spread follows the magnitude, the echo times and the SNR of the scan.
    """
    acquisition = case.acquisition
    echoes = fitted_echoes(acquisition)
    magnitude = acquisition.magnitude[echoes]
    n = NOISE_CORNER_VOXELS
    ends = (slice(0, n), slice(-n, None))
    corners = np.concatenate([magnitude[:, ends[i], ends[j], ends[k]].reshape(len(echoes), -1)
                              for i, j, k in np.ndindex(2, 2, 2)], axis=1)
    mean, spread = corners.mean(axis=1), corners.std(axis=1)
    if not np.all(np.abs(spread / mean / _RAYLEIGH_SD_PER_MEAN - 1.0) < 0.2):
        raise ValueError(f"{case.spec.name}: the field of view's corners are not pure noise (SD / mean "
                         f"{np.round(spread / mean, 3)}, Rayleigh {_RAYLEIGH_SD_PER_MEAN:.3f}); thermal noise needs "
                         "a case with air in its corners (a whole head).")
    sigma = (mean / math.sqrt(math.pi / 2.0)).astype(np.float32).reshape(-1, 1, 1, 1)
    rng = np.random.default_rng(seed)
    noise = sigma * (rng.standard_normal(magnitude.shape, dtype=np.float32)
                     + 1j * rng.standard_normal(magnitude.shape, dtype=np.float32))
    phase = np.angle(magnitude + noise).astype(np.float32)
    times = np.asarray(acquisition.echo_times_s, np.float32)[echoes]
    fitted, maps = weighted_linear(phase, magnitude, times, mask=case.brain_mask)
    return fitted.astype(np.float32), maps["field_weight"].astype(np.float32), maps.get("field_sd_hz")


#: The inversion stage's noisy inputs: the exact local (or total) field plus one of these (Hz, weight, noise map).
NOISE_INPUTS = {"noisy": echo_fit_noise, "thermal": thermal_noise}


def edge_band(mask: np.ndarray, voxel_size_mm, width_mm: float = EDGE_BAND_MM) -> np.ndarray:
    """Voxels of ``mask`` within ``width_mm`` of its boundary."""
    distance = ndi.distance_transform_edt(mask, sampling=tuple(float(v) for v in voxel_size_mm))
    return mask & (distance <= width_mm)


def chi_scores(chi: np.ndarray, case: SuiteCase, region: np.ndarray) -> dict[str, Any]:
    """Chi metrics and deep grey matter ROI errors (ppb) on ``region``."""
    scores: dict[str, Any] = metrics.summary(chi, case.chi_ppm, region)
    # as QSM-CI's scorer: the maps as they are (each on its own reference), the region where chi is reported
    scores["xsim_qsm_ci"] = metrics.xsim_qsm_ci(np.where(region, chi, 0), case.chi_ppm, region)
    dgm = case.deep_grey_matter
    estimated = metrics.roi_means_ppm(chi, np.where(region, case.labels, 0), dgm, region)
    true = metrics.roi_means_ppm(case.chi_ppm, np.where(region, case.labels, 0), dgm, region)
    errors = {name: 1000.0 * (estimated[name] - true[name]) for name in true if name in estimated}
    scores["roi_slope"] = metrics.roi_slope(estimated, true)
    scores["roi_abs_max_ppb"] = max((abs(v) for v in errors.values()), default=float("nan"))
    scores["roi_abs_mean_ppb"] = float(np.mean(np.abs(list(errors.values())))) if errors else float("nan")
    scores["rois_over_target"] = sum(abs(v) > ROI_TARGET_PPB for v in errors.values())
    scores["roi_errors_ppb"] = errors
    scores.update(class_scores(chi, case, region))
    return scores


def class_scores(chi: np.ndarray, case: SuiteCase, region: np.ndarray) -> dict[str, float]:
    """Detrended NRMSE (%) of chi per tissue class (:data:`TISSUE_CLASSES`) on ``region``; NaN where a class
    holds under 10 of its voxels (a case without labels, or a class it lacks)."""
    scores = {}
    for name, members in TISSUE_CLASSES.items():
        values = [index for index, label in case.label_names.items() if label in members]
        voxels = np.isin(case.labels, values) if case.labels is not None and values else np.zeros(region.shape, bool)
        if name == "blood":
            voxels = ndi.binary_dilation(voxels, structure=np.ones((3, 3, 3), bool))
        voxels &= region
        scores[f"nrmse_{name}"] = (metrics.detrended_nrmse(chi, case.chi_ppm, voxels) if voxels.sum() >= 10
                                   else float("nan"))
    return scores


def _field_error(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray, edge: np.ndarray) -> dict[str, float]:
    error = estimate - truth
    offset = float(np.median(error[region]))
    error = error - offset
    inside = error[region & ~edge]
    at_edge = np.abs(error[region & edge])
    return {"field_offset_hz": offset, "field_rms_hz": float(np.sqrt(np.mean(inside**2))),
            "edge_rms_hz": float(np.sqrt(np.mean(at_edge**2))) if at_edge.size else float("nan"),
            "edge_max_hz": float(at_edge.max()) if at_edge.size else float("nan"),
            "edge_outliers": int((at_edge > FIELD_OUTLIER_HZ).sum())}


def _preset_with(preset: str, parameters: dict[str, dict]) -> PipelineConfig:
    """The preset's (or JSON file's) configuration with ``--param`` values applied to every stage whose method
    they name."""
    config = load_config(preset).to_dict()
    for stage in config.values():
        if isinstance(stage, dict) and stage.get("method") in parameters:
            stage["params"] = {**stage["params"], **parameters[stage["method"]]}
    return PipelineConfig.from_dict(config)


def evaluate_case(
    case: SuiteCase,
    *,
    stages=STAGES,
    background_methods: Optional[list[str]] = None,
    inversion_methods: Optional[list[str]] = None,
    parameters: Optional[dict[str, dict]] = None,
    preset: str = "consensus",
    true_mask: bool = False,
    inputs: tuple[str, ...] = ("exact", "noisy", "pipeline"),
    log: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """All rows (one dict per stage, input and method) for one case.

    ``inputs`` selects the inputs of the background (exact, pipeline) and
    inversion (exact, noisy, thermal, pipeline) stages; the pipeline runs only when
    its stage or its input is asked for. ``true_mask`` gives the pipeline the
    case's true brain mask, as a user would give a mask.
    """
    parameters = parameters or {}
    background_methods = list(BACKGROUND_METHODS) if background_methods is None else background_methods
    inversion_methods = list(INVERSION_METHODS) if inversion_methods is None else inversion_methods
    acquisition = case.acquisition
    voxel = acquisition.voxel_size_mm
    rows: list[dict[str, Any]] = []
    base = {"case": case.spec.name}
    need_pipeline = "pipeline" in stages or "pipeline" in inputs
    pipeline = None
    if need_pipeline:
        began = time.perf_counter()
        pipeline = run_pipeline(acquisition, _preset_with(preset, parameters),
                                mask=case.brain_mask if true_mask and case.has_truth else None)
        seconds = time.perf_counter() - began
        log(f"{case.spec.name}: pipeline {seconds:.0f} s")
        if not case.has_truth:
            chi = pipeline.chi_ppm[pipeline.local_mask]
            rows.append({**base, "stage": "pipeline", "input": "raw", "method": preset, "seconds": seconds,
                         "mask_fraction": float(pipeline.mask.mean()), "chi_p1_ppm": float(np.percentile(chi, 1)),
                         "chi_p99_ppm": float(np.percentile(chi, 99)), "chi_sd_ppm": float(chi.std()),
                         "finite": bool(np.all(np.isfinite(pipeline.chi_ppm)))})
            return rows
    if not case.has_truth:
        return rows
    brain = case.brain_mask
    edge = edge_band(brain, voxel)
    if "pipeline" in stages:
        region = pipeline.local_mask & brain
        row = {**base, "stage": "pipeline", "input": "raw", "method": preset, "seconds": seconds,
               "mask_dice": float(2 * (pipeline.mask & brain).sum() / (pipeline.mask.sum() + brain.sum())),
               "mask_outside_brain": int((pipeline.mask & ~brain).sum()),
               "local_nrmse": metrics.nrmse(pipeline.local_field_hz, case.local_field_hz, region)}
        row.update(_field_error(pipeline.total_field_hz, case.total_field_hz, pipeline.mask & brain, edge))
        row.update(chi_scores(pipeline.chi_ppm, case, region))
        # every voxel the pipeline reports, including those outside the true brain (scored on the pipeline's own mask)
        row["nrmse_reported"] = metrics.nrmse(pipeline.chi_ppm, case.chi_ppm, pipeline.local_mask)
        row["reported_outside_brain"] = int((pipeline.local_mask & ~brain).sum())
        # ... and with the true brain mask as its region, where a voxel the pipeline does not report counts as 0
        # (QSM-CI's scorer takes the brain mask's voxels where chi is non-zero: ``nrmse`` above, unless fill_edge)
        row["nrmse_brain"] = metrics.nrmse(pipeline.chi_ppm, case.chi_ppm, brain)
        row["unreported_brain_percent"] = float(100.0 * (brain & ~pipeline.local_mask).sum() / brain.sum())
        rows.append(row)
    available = method_inputs(case)
    if "background" in stages:
        # the true brain mask is a user's mask; the pipeline's is its automatic one
        sources = {"exact": lambda: (case.total_field_hz, brain, None, None, "user"),
                   "pipeline": lambda: (pipeline.total_field_hz, pipeline.mask, pipeline.maps.get("field_weight"),
                                        pipeline.maps.get("field_sd_hz"), "automatic")}
        deep = erode(brain, DEEP_MM, voxel)
        for input_name in [name for name in sources if name in inputs]:
            total, mask, weight, field_sd, mask_source = sources[input_name]()
            for method in background_methods:
                began = time.perf_counter()
                local, valid, chosen = call_method(BACKGROUND_METHODS[method], total, mask, voxel,
                                                   dict(available, field_weight=weight, field_sd_hz=field_sd,
                                                        mask_source=mask_source),
                                                   parameters.get(method, {}))
                region = valid & brain
                rows.append({**base, "stage": "background", "input": input_name, "method": method,
                             "seconds": time.perf_counter() - began, "chosen": chosen,
                             "local_nrmse": metrics.nrmse(local, case.local_field_hz, region),
                             "local_nrmse_deep": metrics.nrmse(local, case.local_field_hz, region & deep),
                             "brain_kept": float(region.sum() / brain.sum())})
                log(f"{case.spec.name}: background {method} ({input_name}) {rows[-1]['local_nrmse']:.1f} %")
    if "inversion" in stages:
        noises = {name: make(case) for name, make in NOISE_INPUTS.items() if name in inputs}

        def with_noise(field: np.ndarray, input_name: str) -> tuple[np.ndarray, np.ndarray, Any, Any]:
            noise, weight, field_sd = noises[input_name]
            return np.where(brain, field + noise, 0).astype(np.float32), brain, weight, field_sd

        sources = {"exact": lambda: (case.local_field_hz, brain, None, None),
                   **{name: lambda name=name: with_noise(case.local_field_hz, name) for name in noises},
                   "pipeline": lambda: (pipeline.local_field_hz, pipeline.local_mask,
                                        pipeline.maps.get("field_weight"), pipeline.maps.get("field_sd_hz"))}
        # single-step methods (takes_total_field) invert the total field with the same noise and mask
        total_sources = {"exact": lambda: (case.total_field_hz, brain, None, None),
                         **{name: lambda name=name: with_noise(case.total_field_hz, name) for name in noises},
                         "pipeline": lambda: (pipeline.total_field_hz, pipeline.mask,
                                              pipeline.maps.get("field_weight"), pipeline.maps.get("field_sd_hz"))}
        for input_name in [name for name in sources if name in inputs]:
            for method in inversion_methods:
                single_step = getattr(INVERSION_METHODS[method], "takes_total_field", False)
                local, mask, field_weight, fit_sd = (total_sources if single_step else sources)[input_name]()
                began = time.perf_counter()
                chi, valid, chosen = call_method(INVERSION_METHODS[method], local, mask, voxel,
                                                 dict(available, field_weight=field_weight, field_sd_hz=fit_sd),
                                                 parameters.get(method, {}))
                row = {**base, "stage": "inversion", "input": input_name, "method": method,
                       "seconds": time.perf_counter() - began, "chosen": chosen}
                if input_name in noises:
                    row["noise_sd_hz"] = float(noises[input_name][0][brain].std())
                row.update(chi_scores(chi, case, valid & brain))
                rows.append(row)
                log(f"{case.spec.name}: inversion {method} ({input_name}) {row['nrmse']:.1f} %")
    return rows


# ---------------------------------------------------------------- reporting

def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _table(header: list[str], lines: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_format(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def summarise(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per stage, input and method: mean and worst case of each metric over the cases."""
    worst_is_max = {"nrmse", "detrended_nrmse", *CLASS_METRICS, "hfen", "local_nrmse", "local_nrmse_deep",
                    "field_rms_hz", "edge_rms_hz", "edge_max_hz", "edge_outliers", "roi_abs_max_ppb",
                    "roi_abs_mean_ppb", "rois_over_target",
                    "mask_outside_brain", "nrmse_reported", "reported_outside_brain"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["stage"] == "pipeline" and "nrmse" not in row:
            continue
        groups.setdefault((row["stage"], row["input"], row["method"]), []).append(row)
    summary: dict[str, list[dict[str, Any]]] = {}
    for (stage, input_name, method), members in groups.items():
        entry = {"stage": stage, "input": input_name, "method": method, "cases": len(members)}
        for key in members[0]:
            # a NaN (a tissue class a case lacks) is left out of the mean and the worst case
            values = [float(m[key]) for m in members if isinstance(m.get(key), (int, float))
                      and not isinstance(m[key], bool) and not math.isnan(m[key])]
            if not values:
                continue
            entry[f"{key}_mean"] = float(np.mean(values))
            if key in worst_is_max:
                entry[f"{key}_worst"] = float(np.max(values))
            elif key == "roi_slope":
                entry[f"{key}_worst"] = float(values[int(np.argmax([abs(v - 1) for v in values]))])
            else:
                entry[f"{key}_worst"] = float(np.min(values))
        summary.setdefault(stage, []).append(entry)
    return summary


def case_info(case: SuiteCase) -> dict[str, Any]:
    """What the cases table shows of a case."""
    return {"case": case.spec.name, "kind": case.spec.kind, "description": case.spec.description,
            "matrix": "x".join(map(str, case.acquisition.spatial_shape)), "generation_s": case.seconds}


def markdown(rows: list[dict[str, Any]], cases: list[dict[str, Any]]) -> str:
    """README-ready tables: the cases (:func:`case_info`), per stage per case, then mean and worst case."""
    parts = ["## Cases\n", _table(["case", "kind", "description", "matrix", "generation (s)"],
                                  [[c["case"], c["kind"], c["description"], c["matrix"], c["generation_s"]]
                                   for c in cases])]
    chi_header = ["NRMSE %", "dNRMSE %", "HFEN %", "XSIM", "XSIM (QSM-CI)", "corr", "ROI slope",
                  "max abs ROI err (ppb)", "mean abs ROI err (ppb)", f"ROIs over {ROI_TARGET_PPB:g} ppb",
                  "dNRMSE % tissue", "dNRMSE % blood", "dNRMSE % DGM"]
    pipeline_rows = [r for r in rows if r["stage"] == "pipeline" and "nrmse" in r]
    if pipeline_rows:
        parts += ["\n## Whole pipeline from raw phase\n", _table(
            ["case", "preset", "s", "field RMS Hz", "edge RMS Hz", "edge max Hz", f"edge >{FIELD_OUTLIER_HZ:g} Hz",
             "mask Dice", "local NRMSE %"] + chi_header + ["NRMSE % on all reported voxels", "reported outside brain",
                                                "NRMSE % on the brain (unreported = 0)", "brain unreported %"],
            [[r["case"], r["method"], r["seconds"], r["field_rms_hz"], r["edge_rms_hz"], r["edge_max_hz"],
              r["edge_outliers"], r["mask_dice"], r["local_nrmse"]]
             + [r.get(k, float("nan")) for k in CHI_METRICS + CLASS_METRICS + (
                 "nrmse_reported", "reported_outside_brain", "nrmse_brain", "unreported_brain_percent")]
             for r in pipeline_rows])]
    plausibility = [r for r in rows if r["stage"] == "pipeline" and "nrmse" not in r]
    if plausibility:
        parts += ["\n## No ground truth (plausibility)\n", _table(
            ["case", "preset", "s", "finite", "mask fraction", "chi p1 ppm", "chi p99 ppm", "chi SD ppm"],
            [[r["case"], r["method"], r["seconds"], r["finite"], r["mask_fraction"], r["chi_p1_ppm"],
              r["chi_p99_ppm"], r["chi_sd_ppm"]] for r in plausibility])]
    background = [r for r in rows if r["stage"] == "background"]
    if background:
        parts += ["\n## Background removal (local-field NRMSE %)\n", _table(
            ["case", "input", "method", "s", "local NRMSE %", f"local NRMSE % deeper than {DEEP_MM:g} mm",
             "brain kept"],
            [[r["case"], r["input"], r["method"], r["seconds"], r["local_nrmse"],
              r.get("local_nrmse_deep", float("nan")), r["brain_kept"]] for r in background])]
    inversion = [r for r in rows if r["stage"] == "inversion"]
    if inversion:
        parts += ["\n## Dipole inversion\n", _table(
            ["case", "input", "method", "s"] + chi_header,
            [[r["case"], r["input"], r["method"], r["seconds"]]
             + [r.get(k, float("nan")) for k in CHI_METRICS + CLASS_METRICS] for r in inversion])]
    if inversion or pipeline_rows:
        names = sorted({name for r in inversion + pipeline_rows for name in r["roi_errors_ppb"]})
        parts += ["\n## Deep grey matter ROI errors (ppb)\n", _table(
            ["case", "input", "method"] + names,
            [[r["case"], r["input"], r["method"]] + [r["roi_errors_ppb"].get(n, float("nan")) for n in names]
             for r in inversion + pipeline_rows])]
    summary = summarise(rows)
    case_names = sorted({r["case"] for r in rows if "nrmse" in r or "local_nrmse" in r})
    parts.append(f"\n## Mean and worst case over the suite ({', '.join(case_names)})\n")
    for stage, entries in summary.items():
        keys = (["local_nrmse", "local_nrmse_deep"] if stage == "background"
                else ["nrmse", "hfen", "xsim", "xsim_qsm_ci", "roi_slope", "roi_abs_max_ppb", "roi_abs_mean_ppb",
                      "rois_over_target", *CLASS_METRICS])
        if stage == "pipeline":
            keys = ["field_rms_hz", "edge_max_hz", "local_nrmse"] + keys + ["nrmse_reported"]
        header = ["stage", "input", "method", "cases"] + [f"{k} {w}" for k in keys for w in ("mean", "worst")]
        parts.append(_table(header, [[e["stage"], e["input"], e["method"], e["cases"]]
                                     + [e.get(f"{k}_{w}", float("nan")) for k in keys for w in ("mean", "worst")]
                                     for e in entries]) + "\n")
    return "\n".join(parts) + "\n"


def _parse_parameters(items: list[str]) -> dict[str, dict]:
    parameters: dict[str, dict] = {}
    known = sorted({registered for methods in REGISTRY.values() for registered in methods})
    for item in items:
        name, _, value = item.partition("=")
        method, _, key = name.partition(".")
        if not key or not value:
            raise SystemExit(f"--param expects METHOD.NAME=VALUE, got {item!r}")
        if method not in known:
            # a stage's name (e.g. 'mask') is not a method's: the value would silently apply nowhere
            raise SystemExit(f"--param {item!r}: {method!r} is no method's name; METHOD is one of {', '.join(known)}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        parameters.setdefault(method, {})[key] = parsed
    return parameters


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names (default: the whole suite)")
    parser.add_argument("--small", action="store_true", help="run the small test cases instead of the suite")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated: pipeline,background,inversion")
    parser.add_argument("--methods", help="comma-separated background/inversion method names (default: all)")
    parser.add_argument("--param", action="append", default=[],
                        help="METHOD.NAME=VALUE (JSON value), repeatable; also set in the pipeline's stages "
                             "that use METHOD")
    parser.add_argument("--preset", default="consensus",
                        help="pipeline preset or JSON configuration file (default consensus)")
    parser.add_argument("--true-mask", action="store_true",
                        help="give the pipeline the true brain mask, as a user's mask (QSM-CI gives one)")
    parser.add_argument("--inputs", default="exact,noisy,pipeline",
                        help="inputs of the background/inversion stages: exact,noisy,thermal,pipeline (pipeline "
                             "runs the whole pipeline first)")
    parser.add_argument("--cache-dir", default=str(CACHE), help="folder of cached cases")
    parser.add_argument("--markdown", help="also write the markdown tables to this file")
    parser.add_argument("--json", help="also write every row as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--from-json", help="comma-separated JSON files of earlier runs: print their tables together")
    arguments = parser.parse_args(argv)
    if arguments.from_json:
        rows, infos = [], []
        for path in arguments.from_json.split(","):
            saved = json.loads(Path(path).read_text())
            rows += saved["rows"]
            infos += saved["cases"]
        text = markdown(rows, infos)
        print(text)
        if arguments.markdown:
            Path(arguments.markdown).write_text(text)
        return rows
    table = SMALL_CASES if arguments.small else CASES
    names = arguments.cases.split(",") if arguments.cases else list(table)
    stages = tuple(s for s in arguments.stages.split(",") if s)
    methods = arguments.methods.split(",") if arguments.methods else None
    unknown = [m for m in methods or [] if m not in BACKGROUND_METHODS and m not in INVERSION_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    background = [m for m in methods if m in BACKGROUND_METHODS] if methods else None
    inversion = [m for m in methods if m in INVERSION_METHODS] if methods else None

    def log(message: str) -> None:
        if not arguments.quiet:
            print(message, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    cases = []
    for name in names:
        began = time.perf_counter()
        case = load_case(table[name] if name in table else name, arguments.cache_dir)
        log(f"{name}: loaded in {time.perf_counter() - began:.0f} s (generated in {case.seconds:.0f} s)")
        cases.append(case)
        rows += evaluate_case(case, stages=stages, background_methods=background, inversion_methods=inversion,
                              parameters=_parse_parameters(arguments.param), preset=arguments.preset,
                              true_mask=arguments.true_mask, inputs=tuple(arguments.inputs.split(",")), log=log)
    infos = [case_info(case) for case in cases]
    text = markdown(rows, infos)
    print(text)
    if arguments.markdown:
        Path(arguments.markdown).write_text(text)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps({"cases": infos, "rows": rows, "summary": summarise(rows)},
                                                   indent=1))
    return rows


if __name__ == "__main__":
    main()
