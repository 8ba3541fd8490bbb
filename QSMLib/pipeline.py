"""The QSM pipeline: configuration, stage registries and ``run_pipeline``.

Each stage picks its algorithm by name from a registry (name -> function);
a stage's ``params`` are passed to that function as keyword arguments, so
the function signature (with defaults from the paper) is the single place
where a method's knobs and defaults live.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ._progress import CancelToken, ProgressCallback, check_cancel, report, sub_progress
from ._version import __version__
from .acquisition import MultiEchoGRE
from .background import METHODS as BACKGROUND_METHODS
from .errors import QSMInputError, QSMWarning
from .fieldmap import METHODS as ECHO_FIT_METHODS
from .fieldmap import per_echo_fields
from .inversion import METHODS as INVERSION_METHODS
from .masking import METHODS as MASK_METHODS
from .masking import validate_user_mask
from .phase import BIPOLAR_METHODS, OFFSET_METHODS
from .referencing import METHODS as REFERENCE_METHODS
from .relaxometry import METHODS as RELAXOMETRY_METHODS
from .roi import roi_statistics
from .unwrap import METHODS as UNWRAP_METHODS

#: Algorithms per stage. Adding a method is adding an entry.
REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    "phase_offset": OFFSET_METHODS,
    "bipolar": BIPOLAR_METHODS,
    "unwrap": UNWRAP_METHODS,
    "echo_fit": ECHO_FIT_METHODS,
    "mask": MASK_METHODS,
    "background": BACKGROUND_METHODS,
    "inversion": INVERSION_METHODS,
    "reference": REFERENCE_METHODS,
    "relaxometry": RELAXOMETRY_METHODS,
}

#: Share of the progress bar each stage takes.
_STAGE_WEIGHTS = {
    "phase_offset": 0.04, "bipolar": 0.03, "unwrap": 0.20, "echo_fit": 0.05, "mask": 0.05,
    "background": 0.15, "inversion": 0.50, "relaxometry": 0.03, "reference": 0.02, "roi": 0.03,
}


@dataclass
class StageConfig:
    """One stage: the method's registry name and keyword arguments for it."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """Every choice the pipeline makes; round-trips through JSON.

    Attributes
    ----------
    phase_offset, bipolar, unwrap, echo_fit, mask, background, inversion, reference, relaxometry : StageConfig
        Method name and parameters per stage (see ``REGISTRY``). ``bipolar``
        runs only for bipolar acquisitions; ``relaxometry`` (R2*/T2* maps)
        only when its method is not ``"none"``.
    per_echo : bool
        Invert every echo's field separately and average the maps (the
        seed document's approach) instead of fitting one total field first.
    """

    phase_offset: StageConfig = field(default_factory=lambda: StageConfig("mcpc3ds"))
    bipolar: StageConfig = field(default_factory=lambda: StageConfig("linear"))
    unwrap: StageConfig = field(default_factory=lambda: StageConfig("romeo"))
    # MCPC-3D-S removes the phase offset, so the fit goes through the origin (half the field noise).
    echo_fit: StageConfig = field(default_factory=lambda: StageConfig("weighted_linear", {"intercept": False}))
    mask: StageConfig = field(default_factory=lambda: StageConfig("phase_quality"))
    background: StageConfig = field(default_factory=lambda: StageConfig("vsharp"))
    inversion: StageConfig = field(default_factory=lambda: StageConfig("medi"))
    reference: StageConfig = field(default_factory=lambda: StageConfig("whole_brain"))
    relaxometry: StageConfig = field(default_factory=lambda: StageConfig("none"))
    per_echo: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build from plain data; unknown keys, stages or methods raise :class:`QSMInputError`."""
        if not isinstance(data, Mapping):
            raise QSMInputError("A pipeline configuration must be a JSON object.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QSMInputError(
                f"Unknown configuration key(s) {sorted(unknown)}; allowed: {sorted(known)}."
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in REGISTRY:
                if isinstance(value, str):
                    value = {"method": value}
                if not isinstance(value, Mapping) or "method" not in value:
                    raise QSMInputError(f"Stage {name!r} needs {{\"method\": ..., \"params\": {{...}}}}.")
                kwargs[name] = StageConfig(str(value["method"]), dict(value.get("params") or {}))
            else:
                kwargs[name] = value
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        """Parse JSON text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise QSMInputError(f"The configuration is not valid JSON: {error}.") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        """Check every method name and parameter name against the registry."""
        for stage in REGISTRY:
            choice: StageConfig = getattr(self, stage)
            function = _lookup(stage, choice.method)
            accepted = _tunable_parameters(function)
            unknown = set(choice.params) - accepted
            if unknown:
                raise QSMInputError(
                    f"Stage {stage!r}, method {choice.method!r} has no parameter(s) {sorted(unknown)}; "
                    f"it accepts {sorted(accepted)}."
                )


#: Maps that stages produce and later stages may take by name (e.g. a phase-quality mask).
PIPELINE_MAPS = {
    "romeo_quality", "fit_residual_rad", "field_weight", "phase_offset_rad", "bipolar_error_rad",
    "bipolar_offset_rad", "r2star", "t2star",
}
#: Inputs that the pipeline itself supplies; never user parameters.
_PIPELINE_ARGUMENTS = {
    "progress", "cancel", "mask", "magnitude", "echo_times_s", "voxel_size_mm", "b0_direction",
    "b0_tesla", "invalid", "labels", "label_names", "weight",
} | PIPELINE_MAPS


def _lookup(stage: str, method: str) -> Callable[..., Any]:
    try:
        return REGISTRY[stage][method]
    except KeyError:
        raise QSMInputError(
            f"Unknown {stage} method {method!r}; available: {', '.join(sorted(REGISTRY[stage]))}."
        ) from None


def _tunable_parameters(function: Callable[..., Any]) -> set[str]:
    return {
        name for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY and name not in _PIPELINE_ARGUMENTS
    }


def _call_stage(stage: str, choice: StageConfig, *args: Any, **available: Any) -> Any:
    """Call the stage's method with its params plus whichever pipeline inputs it accepts."""
    function = _lookup(stage, choice.method)
    accepted = inspect.signature(function).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    inputs = {k: v for k, v in available.items() if takes_any or k in accepted}
    return function(*args, **inputs, **choice.params)


def _preset(**stages: Any) -> PipelineConfig:
    return PipelineConfig.from_dict(stages)


#: Named configurations. ``fast`` favours speed; ``consensus`` follows the
#: 2024 ISMRM QSM consensus as far as the registered methods allow.
PRESETS: dict[str, Callable[[], PipelineConfig]] = {
    "consensus": lambda: _preset(),
    # The consensus phase processing with the quicker linear TV inversion. Laplacian
    # unwrapping is not used here: on the phantom (sinus fields, phase offsets) every
    # Laplacian-based chain measured chi NRMSE 117-320 %; it stays available by name.
    "fast": lambda: _preset(inversion={"method": "tv"}),
}
DEFAULT_PRESET = "consensus"


def load_config(name_or_path: Union[str, Path, None]) -> PipelineConfig:
    """A preset by name, or a JSON configuration file (partial files inherit the defaults)."""
    if name_or_path is None:
        return PRESETS[DEFAULT_PRESET]()
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]()
    path = Path(text)
    if not path.is_file():
        raise QSMInputError(
            f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON configuration file."
        )
    return PipelineConfig.from_json(path.read_text())


@dataclass
class QSMResult:
    """Susceptibility and every intermediate of one pipeline run.

    All maps share the acquisition's spatial shape (array-axis order).
    ``chi_ppm`` is referenced; fields are in Hz; masks are bool.
    """

    chi_ppm: np.ndarray
    mask: np.ndarray
    local_mask: np.ndarray
    local_field_hz: np.ndarray
    total_field_hz: Optional[np.ndarray] = None
    unwrapped_phase: Optional[np.ndarray] = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    roi: list[dict] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    config: PipelineConfig = field(default_factory=PipelineConfig)

    def provenance(self, inputs: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """What produced this result: config, versions, timings, reference, inputs."""
        import scipy
        import SimpleITK

        return {
            "software": {
                "QSMLib": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "scipy": scipy.__version__, "SimpleITK": SimpleITK.Version_VersionString(),
            },
            "config": self.config.to_dict(),
            "reference": self.reference,
            "timings_s": self.timings_s,
            "inputs": dict(inputs or {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


class _Timer:
    """Collects per-stage wall times and maps stage progress onto the whole run."""

    def __init__(self, progress: ProgressCallback, stages: Sequence[str]):
        self.progress = progress
        weights = [_STAGE_WEIGHTS[s] for s in stages]
        total = sum(weights)
        starts = np.cumsum([0.0, *weights])[:-1] / total
        self.span = {s: (float(a), float(a + w / total)) for s, a, w in zip(stages, starts, weights)}
        self.timings: dict[str, float] = {}

    def run(self, stage: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start, stop = self.span[stage]
        report(self.progress, start, f"{stage}: starting")
        began = time.perf_counter()
        scaled = sub_progress(self.progress, start, stop)
        labelled = None if scaled is None else (lambda fraction, message: scaled(fraction, f"{stage}: {message}"))
        result = function(*args, progress=labelled, **kwargs)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - began
        return result


def run_pipeline(
    acquisition: MultiEchoGRE,
    config: Optional[PipelineConfig] = None,
    *,
    mask: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> QSMResult:
    """Multi-echo magnitude and phase -> referenced susceptibility map (ppm).

    Parameters
    ----------
    acquisition : MultiEchoGRE
        The data, phase in radians.
    config : PipelineConfig, optional
        Defaults to the ``consensus`` preset.
    mask : numpy.ndarray, optional
        Brain mask on the image grid; replaces the automatic mask.
    labels, label_names : optional
        Label map (int, 0 = background) and names for ROI statistics (and
        for ``label`` referencing).
    progress : callable(fraction, message), optional
    cancel : callable() -> bool or threading.Event, optional
        Checked between and inside stages; raises :class:`QSMCancelled`.

    Returns
    -------
    QSMResult
    """
    config = copy.deepcopy(config or PRESETS[DEFAULT_PRESET]())
    config.validate()
    user_mask = None if mask is None else validate_user_mask(mask, acquisition.spatial_shape)
    if labels is not None and np.shape(labels) != acquisition.spatial_shape:
        raise QSMInputError(
            f"The label map has shape {np.shape(labels)}, the images {acquisition.spatial_shape}: they must match."
        )
    if acquisition.bipolar and config.bipolar.method == "none":
        warnings.warn("The acquisition is bipolar but bipolar correction is 'none': even echoes keep their "
                      "readout phase error.", QSMWarning, stacklevel=2)
    stages = ["phase_offset"] + (["bipolar"] if acquisition.bipolar else []) + ["unwrap", "echo_fit"] + (
        ["mask"] if user_mask is None else []) + ["background", "inversion"] + (
        ["relaxometry"] if config.relaxometry.method != "none" else []) + ["reference"] + (
        ["roi"] if labels is not None else [])
    timer = _Timer(progress, stages)
    geometry = {"b0_direction": acquisition.b0_direction, "b0_tesla": acquisition.b0_tesla}
    phase = acquisition.phase * np.float32(acquisition.phase_sign)
    magnitude = acquisition.magnitude
    check_cancel(cancel)
    maps: dict[str, np.ndarray] = {}
    phase_stages = ["phase_offset"] + (["bipolar"] if acquisition.bipolar else []) + ["unwrap"]
    for stage in phase_stages:
        phase = timer.run(
            stage, _call_stage, stage, getattr(config, stage), phase, magnitude, acquisition.echo_times_s,
            acquisition.voxel_size_mm, cancel=cancel,
        )
        if isinstance(phase, tuple):
            phase, stage_maps = phase
            maps.update(stage_maps)
    unwrapped = phase
    total_field_hz, fit_maps = timer.run(
        "echo_fit", _call_stage, "echo_fit", config.echo_fit, unwrapped, magnitude, acquisition.echo_times_s,
        cancel=cancel,
    )
    maps.update(fit_maps)
    if user_mask is not None:
        brain_mask = user_mask & ~acquisition.invalid_voxels
    else:
        # Runs after the echo fit so that phase-quality methods can use its maps.
        brain_mask = timer.run(
            "mask", _call_stage, "mask", config.mask, magnitude, acquisition.voxel_size_mm,
            invalid=acquisition.invalid_voxels, cancel=cancel, **maps,
        )
    available = dict(geometry, cancel=cancel, magnitude=magnitude, **fit_maps)

    if config.per_echo:
        local_fields, chis, valid = [], [], brain_mask.copy()
        for echo_field in per_echo_fields(unwrapped, acquisition.echo_times_s):
            local, local_valid = timer.run(
                "background", _call_stage, "background", config.background, echo_field, brain_mask,
                acquisition.voxel_size_mm, **available,
            )
            chis.append(timer.run(
                "inversion", _call_stage, "inversion", config.inversion, local, local_valid,
                acquisition.voxel_size_mm, **available,
            ))
            local_fields.append(local)
            valid &= local_valid
        local_field_hz = np.mean(local_fields, axis=0).astype(np.float32)
        chi = np.where(valid, np.mean(chis, axis=0), 0).astype(np.float32)
        local_mask = valid
    else:
        local_field_hz, local_mask = timer.run(
            "background", _call_stage, "background", config.background, total_field_hz, brain_mask,
            acquisition.voxel_size_mm, **available,
        )
        chi = timer.run(
            "inversion", _call_stage, "inversion", config.inversion, local_field_hz, local_mask,
            acquisition.voxel_size_mm, **available,
        )
    if config.relaxometry.method != "none":
        maps.update(timer.run(
            "relaxometry", _call_stage, "relaxometry", config.relaxometry, magnitude, acquisition.echo_times_s,
            mask=brain_mask, cancel=cancel,
        ))
    return _finish(
        chi, local_mask, config, timer, labels, label_names, acquisition.voxel_size_mm, cancel,
        magnitude=magnitude, mask=brain_mask, local_field_hz=local_field_hz, total_field_hz=total_field_hz,
        unwrapped_phase=unwrapped, maps=maps,
    )


def run_pipeline_from_field(
    field_hz: np.ndarray,
    mask: np.ndarray,
    *,
    field_kind: str,
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float],
    b0_tesla: float,
    config: Optional[PipelineConfig] = None,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> QSMResult:
    """Start mid-pipeline from a field map in Hz (the stages QSM-CI benchmarks).

    Parameters
    ----------
    field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field (``field_kind="total"``: background removal runs first)
        or local field (``field_kind="local"``: inversion only), in Hz.
    mask : numpy.ndarray
        Brain mask (required: there is no magnitude to derive one from).
    voxel_size_mm, b0_direction, b0_tesla
        Geometry and field strength.
    """
    if field_kind not in ("total", "local"):
        raise QSMInputError(f"field_kind must be 'total' or 'local', got {field_kind!r}.")
    field_hz = np.asarray(field_hz, dtype=np.float32)
    if field_hz.ndim != 3:
        raise QSMInputError(f"The field map must be 3D, got shape {field_hz.shape}.")
    brain_mask = validate_user_mask(mask, field_hz.shape)
    finite = np.isfinite(field_hz)
    if not finite[brain_mask].all():
        brain_mask = brain_mask & finite
        if not brain_mask.any():
            raise QSMInputError("The field map has no finite value inside the mask.")
    field_hz = np.where(finite, field_hz, 0).astype(np.float32)
    config = copy.deepcopy(config or PRESETS[DEFAULT_PRESET]())
    config.validate()
    stages = (["background"] if field_kind == "total" else []) + ["inversion", "reference"] + (
        ["roi"] if labels is not None else []
    )
    timer = _Timer(progress, stages)
    available = {"b0_direction": tuple(b0_direction), "b0_tesla": b0_tesla, "cancel": cancel}
    if field_kind == "total":
        local_field_hz, local_mask = timer.run(
            "background", _call_stage, "background", config.background, field_hz, brain_mask, voxel_size_mm,
            **available,
        )
        total_field_hz: Optional[np.ndarray] = field_hz
    else:
        local_field_hz, local_mask, total_field_hz = np.where(brain_mask, field_hz, 0), brain_mask, None
    chi = timer.run(
        "inversion", _call_stage, "inversion", config.inversion, local_field_hz, local_mask, voxel_size_mm,
        **available,
    )
    return _finish(
        chi, local_mask, config, timer, labels, label_names, voxel_size_mm, cancel,
        mask=brain_mask, local_field_hz=local_field_hz, total_field_hz=total_field_hz,
    )


def _finish(
    chi: np.ndarray,
    local_mask: np.ndarray,
    config: PipelineConfig,
    timer: _Timer,
    labels: Optional[np.ndarray],
    label_names: Optional[Mapping[int, str]],
    voxel_size_mm: Sequence[float],
    cancel: CancelToken,
    *,
    magnitude: Optional[np.ndarray] = None,
    **intermediates: Any,
) -> QSMResult:
    """Reference chi, add the whole-brain reference the consensus asks for, compute ROI statistics.

    ``magnitude`` (echo, n0, n1, n2), when known, lets references such as CSF
    find their region automatically.
    """
    check_cancel(cancel)
    began = time.perf_counter()
    referenced, reference = _call_stage(
        "reference", config.reference, chi, local_mask, labels=labels, label_names=label_names,
        voxel_size_mm=voxel_size_mm, magnitude=magnitude,
    )
    if config.reference.method != "whole_brain":
        brain_referenced = chi[local_mask] - chi[local_mask].mean()
        reference["whole_brain_mean_ppm"] = float(referenced[local_mask].mean())
        reference["whole_brain_sd_ppm"] = float(brain_referenced.std())
    else:
        reference["whole_brain_sd_ppm"] = float(referenced[local_mask].std())
    timer.timings["reference"] = time.perf_counter() - began
    rows: list[dict] = []
    if labels is not None:
        began = time.perf_counter()
        rows = roi_statistics(referenced, labels, voxel_size_mm, label_names=label_names, mask=local_mask)
        timer.timings["roi"] = time.perf_counter() - began
    report(timer.progress, 1.0, "done: finished")
    return QSMResult(
        chi_ppm=referenced, local_mask=local_mask, reference=reference, roi=rows,
        timings_s=dict(timer.timings), config=config, **intermediates,
    )
