"""The QSM pipeline: configuration, stage registries and ``run_pipeline``.

Each stage picks its algorithm by name from a registry (name ->
:class:`QSMLib.contract.Method`); the pipeline passes the stage's data, the
pipeline inputs the entry declares, and the stage's ``params`` as keyword
arguments, so the function signature (with defaults from the paper) is the
single place where a method's knobs and defaults live.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _fft
from ._backend import CPU, DEVICES, Device, resolve_device
from ._morphology import dilate, large_pieces
from ._operators import masked_smoothing
from ._progress import CancelToken, ProgressCallback, check_cancel, report, sub_progress
from ._threads import limit_threads
from ._validation import check_parameter
from ._version import __version__
from .acquisition import MultiEchoGRE, check_field_strength
from .background import METHODS as BACKGROUND_METHODS
from .contract import Method
from .dipole import forward_field
from .errors import QSMInputError, QSMWarning
from .fieldmap import METHODS as ECHO_FIT_METHODS
from .fieldmap import per_echo_fields
from .inversion import METHODS as INVERSION_METHODS
from .masking import APPENDAGE_ML, coverage_along_b0, validate_user_mask
from .masking import METHODS as MASK_METHODS
from .phase import BIPOLAR_METHODS, OFFSET_METHODS
from .phase.bipolar import BIPOLAR_THRESHOLD_RAD, bipolar_score
from .plausibility import ECHO_RISE_ALLOWED, chi_tail_asymmetry, magnitude_decay, phase_evolution
from .referencing import METHODS as REFERENCE_METHODS
from .relaxometry import METHODS as RELAXOMETRY_METHODS
from .roi import roi_statistics
from .units import ppm_to_hz
from .unwrap import METHODS as UNWRAP_METHODS
from .zero_fill import (
    AUTO_ZERO_FILL_INVERSIONS,
    COARSE_FACTOR,
    band_limited_back,
    cut_axes,
    nearest_samples,
    nearest_upsampled,
    ringing_excess,
    solving_shape,
    solving_voxel_mm,
    zero_filled_acquisition,
)

#: Algorithms per stage (see :mod:`QSMLib.contract`). Adding a method is adding an entry.
REGISTRY: dict[str, dict[str, Method]] = {
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
    """One stage: the method's registry name and keyword arguments for it.

    Examples
    --------
    >>> StageConfig("vsharp", {"max_radius_mm": 10.0})
    StageConfig(method='vsharp', params={'max_radius_mm': 10.0})
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    """Every choice the pipeline makes; round-trips through JSON.

    Attributes
    ----------
    phase_offset, bipolar, unwrap, echo_fit, mask, background, inversion, reference, relaxometry : StageConfig
        Method name and parameters per stage (see ``REGISTRY``). ``bipolar``
        runs only for bipolar acquisitions (flagged or detected), first of
        the phase stages; ``relaxometry`` (R2*/T2* maps) only when its
        method is not ``"none"``.
    per_echo : bool
        Invert every echo's field separately and average the maps (the
        seed document's approach) instead of fitting one total field first.
    threads : int
        Threads of the FFTs (and of BLAS where ``threadpoolctl`` is
        installed) while the stages run; 0 (default) uses every core. Results
        do not depend on it.
    device : {"cpu", "cuda", "auto"}
        Where the solvers with a GPU path run (background removal ``ismv``,
        inversion ``tfi`` and ``tv``; the other methods and stages
        always run on the CPU): ``"cpu"`` (default), ``"cuda"`` (a CUDA GPU
        through PyTorch or CuPy; an error saying what to install when there
        is none) or ``"auto"`` (the GPU when PyTorch or CuPy sees one, else
        the CPU). The default stays the CPU: its results are those of earlier
        releases bit for bit, it imports no GPU library, and the GPU's speed
        has not been measured in this project. Results on the GPU agree with
        the CPU's to float32 rounding; provenance says which device ran.
    zero_fill_mm : "auto", float or None
        Voxel size (mm) the phase, field, mask and inversion stages work at
        when the scan's voxels are coarser (by more than
        :data:`~QSMLib.zero_fill.COARSE_FACTOR`): its complex echoes are
        zero-filled in k-space onto that finer grid, and chi and the local
        field are brought back to the scan's grid with the scan's own k-space
        band (:mod:`QSMLib.zero_fill`). Not along an axis the field of view
        cuts at both ends (a slab's), nor where the finer grid would hold more
        than 8 times the scan's voxels. ``"auto"`` (default): 1 mm (or half
        the scan's largest voxel, if coarser) when the magnitude rings in the
        air outside the head as an image recorded in k-space does
        (:func:`~QSMLib.zero_fill.ringing_excess`), else the scan's grid; in
        effect, scans with voxels over 1.25 mm whose data are band-limited,
        and only with the inversions in
        :data:`~QSMLib.zero_fill.AUTO_ZERO_FILL_INVERSIONS` (TFI, the default:
        its automatic lambda follows the scan's voxels; with linear TV, MEDI,
        nonlinear TV and SS-TV zero-filling raised the worst deep grey matter
        ROI error by 10-16 ppb). None solves on the scan's grid.
        On the validation suite's 1.3-2 mm heads, whose data are
        band-limited as a scanner records them, 1 mm lowered chi NRMSE by
        2.2-4.2 points; on heads simulated with chi
        sampled on the output grid and on the project's box-averaged
        phantom it raised it, and there the automatic choice keeps the scan's
        grid (README, "Zero-filling coarse scans").
    fill_edge : bool
        Report chi on the whole brain mask: the voxels of the mask that the
        inversion leaves out (its outer band) get the mean of the reported
        chi around them (:func:`fill_edge`). ``local_mask`` still marks the
        inversion's own voxels, on which referencing and ROI statistics are
        computed. Off by default (those voxels stay 0), as QSM is usually
        reported and scored: QSM-CI scores a map on the brain mask's voxels
        where it is non-zero. For a map with no empty rim inside the brain,
        or an evaluation over the whole brain mask, turn it on.

    Examples
    --------
    >>> config = PipelineConfig.from_dict({"inversion": {"method": "tv", "params": {"max_iterations": 80}}})
    >>> config.inversion
    StageConfig(method='tv', params={'max_iterations': 80})
    >>> PipelineConfig.from_json(config.to_json()) == config
    True
    """

    phase_offset: StageConfig = field(default_factory=lambda: StageConfig("mcpc3ds"))
    # before the phase offsets (its estimate cancels them), so MCPC-3D-S runs once, on corrected echoes
    bipolar: StageConfig = field(default_factory=lambda: StageConfig("linear", {"remove_offset": False}))
    unwrap: StageConfig = field(default_factory=lambda: StageConfig("romeo"))
    # MCPC-3D-S removes the phase offset, so the fit goes through the origin (half the field noise).
    echo_fit: StageConfig = field(default_factory=lambda: StageConfig("weighted_linear", {"intercept": False}))
    mask: StageConfig = field(default_factory=lambda: StageConfig("phase_quality"))
    # used when the inversion is not single-step (the default TFI removes the background itself)
    background: StageConfig = field(default_factory=lambda: StageConfig("ismv"))
    # total field inversion averaged with single-step TV: on the validation suite the most accurate
    # from raw phase (chi NRMSE 32.9 / 31.5 % mean on the tuning / held-out cases, deep grey matter
    # within 2.8-11.4 ppb per case)
    inversion: StageConfig = field(default_factory=lambda: StageConfig("tfi"))
    reference: StageConfig = field(default_factory=lambda: StageConfig("whole_brain"))
    relaxometry: StageConfig = field(default_factory=lambda: StageConfig("none"))
    per_echo: bool = False
    threads: int = 0
    device: str = "cpu"
    zero_fill_mm: Union[str, float, None] = "auto"
    fill_edge: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build from plain data; anything unknown or of the wrong type raises :class:`QSMInputError`.

        Every problem is listed in one message (stage, method, parameter,
        the value received and what is allowed); see :meth:`validate`.
        """
        if not isinstance(data, Mapping):
            raise QSMInputError(f"A pipeline configuration must be a JSON object, got {_json_kind(data)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        problems = [f"Unknown configuration key {key!r}; allowed: {', '.join(sorted(known))}"
                    for key in data if key not in known]
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in REGISTRY:
                stage = _stage_from_data(name, value, problems)
                if stage is not None:
                    kwargs[name] = stage
            elif name in known:
                kwargs[name] = value
        if problems:
            raise QSMInputError(_problem_text(problems))
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> PipelineConfig:
        """Parse JSON text, or bytes in UTF-8, UTF-16 or UTF-32 (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:  # syntax, encoding, or absurd nesting
            raise QSMInputError(f"The configuration is not valid JSON: {error}.") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        """Check every method name, parameter name, type and range against the registry, the threads and device.

        Parameter values are checked against their method's signature and
        documented choices (:func:`QSMLib._validation.check_parameter`); a
        whole-number float given for an integer parameter is stored as int.
        """
        problems = []
        for name in ("per_echo", "fill_edge"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {json.dumps(getattr(self, name), default=repr)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            problems.append(f"threads must be a whole number >= 0 (0 = every core), got "
                            f"{json.dumps(self.threads, default=repr)}")
        if self.zero_fill_mm not in (None, "auto") and (isinstance(self.zero_fill_mm, bool) or not isinstance(
                self.zero_fill_mm, (int, float)) or not 0.2 <= self.zero_fill_mm <= 10):
            problems.append(f"zero_fill_mm must be \"auto\", a voxel size in mm from 0.2 to 10, or null (off), "
                            f"got {json.dumps(self.zero_fill_mm, default=repr)}")
        if not isinstance(self.device, str) or self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}, got {json.dumps(self.device, default=repr)}")
        for stage in REGISTRY:
            choice = getattr(self, stage)
            if not isinstance(choice, StageConfig) or not isinstance(choice.method, str):
                problems.append(f"Stage {stage!r} must be a StageConfig(method, params), got {choice!r}")
                continue
            if choice.method not in REGISTRY[stage]:
                problems.append(f"Unknown {stage} method {choice.method!r}; available: "
                                f"{', '.join(sorted(REGISTRY[stage]))}")
                continue
            if not isinstance(choice.params, dict):
                problems.append(f"Stage {stage!r}: params must be an object, got {choice.params!r}")
                continue
            entry = REGISTRY[stage][choice.method]
            accepted = entry.tunable_parameters()
            for name, value in choice.params.items():
                if name not in accepted:
                    owners = sorted(other for other, method in REGISTRY[stage].items()
                                    if name in method.tunable_parameters())
                    # a method changed in place keeps the parameters of the one before (a preset's, say)
                    hint = (f" ({name!r} belongs to {', '.join(map(repr, owners))}: when changing a stage's "
                            f"method, give its parameters anew, e.g. StageConfig({choice.method!r}))") if owners else ""
                    problems.append(f"Stage {stage!r}, method {choice.method!r} has no parameter {name!r}; it "
                                    f"accepts {', '.join(sorted(accepted)) or 'none'}{hint}")
                    continue
                checked, allowed = check_parameter(entry.function, name, value)
                if allowed is not None:
                    problems.append(f"Stage {stage!r}, method {choice.method!r}, parameter {name!r}: got "
                                    f"{json.dumps(value, default=repr)}, allowed: {allowed}")
                else:
                    choice.params[name] = checked
        if problems:
            raise QSMInputError(_problem_text(problems))


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _problem_text(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return f"{problems[0]}."
    return "Invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems)


def _stage_from_data(stage: str, value: Any, problems: list[str]) -> Optional[StageConfig]:
    """A stage's ``"method"`` or ``{"method": ..., "params": {...}}``, or None with the problem noted."""
    if isinstance(value, str):
        value = {"method": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("method"), str):
        problems.append(f'Stage {stage!r} needs "method name" or {{"method": "name", "params": {{...}}}}, '
                        f"got {json.dumps(value, default=repr)}")
        return None
    extra = sorted(set(value) - {"method", "params"})
    if extra:
        problems.append(f"Stage {stage!r} has unknown key(s) {extra}; a stage has only \"method\" and \"params\"")
    params = value.get("params")
    if params is not None and not isinstance(params, Mapping):
        problems.append(f"Stage {stage!r}: params must be an object of parameter names and values, got "
                        f"{json.dumps(params, default=repr)}")
        return None
    return StageConfig(value["method"], dict(params or {}))


def _lookup(stage: str, method: str) -> Method:
    try:
        return REGISTRY[stage][method]
    except KeyError:
        raise QSMInputError(
            f"Unknown {stage} method {method!r}; available: {', '.join(sorted(REGISTRY[stage]))}."
        ) from None


def _preset(**stages: Any) -> PipelineConfig:
    return PipelineConfig.from_dict(stages)


#: Named configurations. ``fast`` favours speed; ``consensus`` follows the
#: 2024 ISMRM QSM consensus as far as the registered methods allow.
PRESETS: dict[str, Callable[[], PipelineConfig]] = {
    "consensus": lambda: _preset(),
    # The consensus phase processing with single-step TV (SS-TV, TFI's second solve run alone, its
    # stopping tolerance 0.01 at any voxel size): no background removal step, no outside sources.
    # On the twelve validation suite cases (whole pipeline) chi NRMSE 36.3 / 53.4 % mean / worst
    # (tuning) and 36.7 / 42.0 % (held out), worst deep grey matter ROI errors 4.3-13.5 and
    # 3.2-26.2 ppb per case, against 40.2 / 48.8 %, 43.6 / 52.9 % and 17.5-30.8, 15.2-51.7 ppb for
    # the former iSMV + linear TV (worse only on the noisiest case: 53.4 against 43.8 %); 2.5-3.7 s
    # quicker at 256x256x176x9, interleaved (README "Measured speed"). The automatic tolerance
    # (0.005 at 1 mm) was 0.5-3.3 points better on the 0.7-1.5 mm cases and 1.1-3.7 s slower.
    # Laplacian unwrapping is not used: on the phantom (sinus fields, phase offsets) every
    # Laplacian-based chain measured chi NRMSE 117-320 %; it stays available by name.
    # It solves on the scan's grid: zero-filling (the consensus preset's "auto") took 2.5-10 times as long.
    "fast": lambda: _preset(inversion={"method": "sstv", "params": {"tolerance": 0.01}}, zero_fill_mm=None),
}
DEFAULT_PRESET = "consensus"


def load_config(name_or_path: Union[str, Path, None]) -> PipelineConfig:
    """A preset by name, or a JSON configuration file (partial files inherit the defaults).

    Examples
    --------
    >>> load_config("fast").inversion.method
    'sstv'
    """
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
    try:
        content = path.read_bytes()
    except OSError as error:
        raise QSMInputError(f"Cannot read the configuration file {path} ({error.strerror}).") from None
    try:
        return PipelineConfig.from_json(content)
    except QSMInputError as error:
        raise QSMInputError(f"{path}: {error}") from None


@dataclass
class QSMResult:
    """Susceptibility and every intermediate of one pipeline run.

    All maps share the acquisition's spatial shape (array-axis order).
    ``chi_ppm`` is referenced; fields are in Hz; masks are bool.
    ``parameters`` holds, per stage, the values its method chose from the
    data (e.g. the inversion's regularisation) and how; ``device`` the
    configured device, the one used and the stages that ran on it.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()
    >>> result = run_pipeline(scan.acquisition, PRESETS["fast"]())
    >>> sorted(result.timings_s)[:3], result.chi_ppm.dtype
    (['echo_fit', 'inversion', 'mask'], dtype('float32'))
    >>> sorted(result.provenance())
    ['chosen_parameters', 'config', 'created', 'device', 'inputs', 'reference', 'software', 'timings_s']
    >>> result.device
    {'requested': 'cpu', 'used': 'cpu: numpy', 'stages': ['inversion']}
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
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: PipelineConfig = field(default_factory=PipelineConfig)
    device: dict[str, Any] = field(default_factory=dict)

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
            "chosen_parameters": self.parameters,
            "device": self.device,
            "timings_s": self.timings_s,
            "inputs": dict(inputs or {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


class _Stages:
    """Runs the configured method of each stage: declared inputs in, timings and progress collected.

    ``stages`` lists the stages this run will execute, in order, so that each
    gets its share of the progress bar; ``device`` is the configuration's
    device, resolved, for the methods that declare it.
    """

    def __init__(
        self, config: PipelineConfig, stages: Sequence[str], progress: ProgressCallback, cancel: CancelToken,
        device: Device = CPU,
    ):
        self.config, self.progress, self.cancel, self.device = config, progress, cancel, device
        self.device_stages: list[str] = []
        weights = [_STAGE_WEIGHTS[s] for s in stages]
        total = sum(weights)
        starts = np.cumsum([0.0, *weights])[:-1] / total
        self.span = {s: (float(a), float(a + w / total)) for s, a, w in zip(stages, starts, weights)}
        self.timings: dict[str, float] = {}
        self.parameters: dict[str, dict[str, Any]] = {}

    def __call__(self, stage: str, *data: Any, inputs: Mapping[str, Any]) -> Any:
        """Run ``stage``'s method on its positional ``data`` with the ``inputs`` it declares."""
        check_cancel(self.cancel)
        choice: StageConfig = getattr(self.config, stage)
        method = _lookup(stage, choice.method)
        start, stop = self.span[stage]
        report(self.progress, start, f"{stage}: starting")
        scaled = sub_progress(self.progress, start, stop)
        control = {"cancel": self.cancel, "progress": None if scaled is None else (
            lambda fraction, message: scaled(fraction, f"{stage}: {message}"))}
        arguments = {name: inputs[name] for name in method.inputs if inputs.get(name) is not None}
        if "device" in method.inputs:
            arguments["device"] = self.device
            if stage not in self.device_stages:
                self.device_stages.append(stage)
        elif self.device is not CPU and stage in ("background", "inversion") and stage not in self.timings:
            warnings.warn(f"{stage} method {choice.method!r} has no GPU path: it runs on the CPU (on the GPU: "
                          "background ismv, inversion tfi and tv).", QSMWarning, stacklevel=3)
        arguments.update({name: control[name] for name in method.accepts_control()})
        began = time.perf_counter()
        with limit_threads(self.config.threads):
            result = method(*data, **arguments, **choice.params)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - began
        chosen = getattr(result, "parameters", None)
        if chosen:
            self.parameters.setdefault(stage, {}).update(chosen)
        return result


def run_pipeline(
    acquisition: MultiEchoGRE,
    config: Optional[PipelineConfig] = None,
    *,
    mask: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    label_names: Optional[Mapping[int, str]] = None,
    overwrite_phase: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> QSMResult:
    """Multi-echo magnitude and phase -> referenced susceptibility map (ppm).

    Parameters
    ----------
    acquisition : MultiEchoGRE
        The data, phase in radians. When its readout is not known
        (``bipolar=None``), the even echoes are corrected if they look
        bipolar (:func:`_bipolar_readout`; provenance ``chosen_parameters``
        says what was found).
    config : PipelineConfig, optional
        Defaults to the ``consensus`` preset.
    mask : numpy.ndarray, optional
        Brain mask on the image grid: chi is reported inside it only. The
        inversion solves on the voxels whose phase is reliable (the
        automatic mask), so voxels of it that the automatic mask rejects,
        and the inversion's edge band next to them, are not reported (see
        :func:`_data_region`).
    labels, label_names : optional
        Label map (int, 0 = background) and names for ROI statistics (and
        for ``label`` referencing).
    overwrite_phase : bool
        Let the phase stages write into ``acquisition.phase`` (when float32),
        which then holds the unwrapped phase: for callers that read the data
        only to reconstruct it (``qsm run``, cohort tasks). Either way each
        phase stage writes into the previous one's output, the pipeline's
        own: a run holds one phase-sized array besides the input's (with
        this, none), instead of one per phase stage.
    progress : callable(fraction, message), optional
    cancel : callable() -> bool or threading.Event, optional
        Checked between and inside stages; raises :class:`QSMCancelled`.

    Returns
    -------
    QSMResult

    Examples
    --------
    >>> from QSMLib.phantom import simulate_head
    >>> phantom = simulate_head(voxel_size_mm=(4, 4, 4))
    >>> result = run_pipeline(phantom.acquisition, PRESETS["fast"]())
    >>> result.chi_ppm.shape == phantom.chi_ppm.shape, result.chi_ppm.dtype
    (True, dtype('float32'))
    """
    config = copy.deepcopy(config or PRESETS[DEFAULT_PRESET]())
    config.validate()
    user_mask = None if mask is None else validate_user_mask(mask, acquisition.spatial_shape)
    if labels is not None and np.shape(labels) != acquisition.spatial_shape:
        raise QSMInputError(
            f"The label map has shape {np.shape(labels)}, the images {acquisition.spatial_shape}: they must match."
        )
    echo_order = _check_echo_order(acquisition)
    bipolar, detection = _bipolar_readout(acquisition, config)
    # the bipolar error is estimated from echo triples in which any echo-independent offset cancels; corrected
    # first, the even echoes give MCPC-3D-S an offset estimate free of it
    phase_stages = (["bipolar"] if bipolar else []) + ["phase_offset", "unwrap"]
    single_step = _lookup("inversion", config.inversion.method).takes_total_field
    stages = phase_stages + ["echo_fit", "mask"] + (
        [] if single_step else ["background"]) + ["inversion"] + (
        ["relaxometry"] if config.relaxometry.method != "none" else []) + ["reference"] + (
        ["roi"] if labels is not None else [])
    run = _Stages(config, stages, progress, cancel, resolve_device(config.device))
    if detection:
        run.parameters["bipolar"] = detection
    if echo_order:
        run.parameters["echo_order"] = echo_order
    scan = acquisition
    acquisition = _solving_acquisition(run, scan)
    if acquisition is not scan:
        overwrite_phase = True  # the zero-filled echoes are the pipeline's own
        if user_mask is not None:
            user_mask = nearest_upsampled(user_mask, acquisition.spatial_shape)
    magnitude, echo_times, voxel = acquisition.magnitude, acquisition.echo_times_s, acquisition.voxel_size_mm
    inputs: dict[str, Any] = {
        "magnitude": magnitude, "echo_times_s": echo_times, "voxel_size_mm": voxel,
        "b0_tesla": acquisition.b0_tesla, "b0_direction": acquisition.b0_direction,
        "invalid": acquisition.invalid_voxels, "labels": labels, "label_names": label_names,
        "phase_sign": acquisition.phase_sign,
    }
    if acquisition is not scan:
        inputs["acquired_voxel_size_mm"] = scan.voxel_size_mm
    maps: dict[str, np.ndarray] = {}

    # The acquisition's own phase goes in unless its sign flips. Stages write into the phase they get
    # only when it is the pipeline's own array (or the caller handed the acquisition's over).
    phase = acquisition.phase if acquisition.phase_sign == 1 else -acquisition.phase
    for stage in phase_stages:
        inputs["overwrite_phase"] = overwrite_phase or not np.may_share_memory(phase, acquisition.phase)
        phase_result = run(stage, phase, magnitude, echo_times, voxel, inputs=inputs)
        phase = phase_result.phase
        maps.update(phase_result.maps)
    del inputs["overwrite_phase"]
    unwrapped = phase
    fit = run("echo_fit", unwrapped, magnitude, echo_times, inputs=inputs)
    maps.update(fit.maps)
    inputs.update(maps)
    inputs["total_field_hz"] = fit.total_field_hz
    # after the echo fit, so that phase-quality methods can use its maps
    if user_mask is not None:
        brain_mask = user_mask & ~acquisition.invalid_voxels
        data_mask, data_inputs = _data_region(run, brain_mask, magnitude, voxel, inputs)
    else:
        brain_mask = run("mask", magnitude, voxel, inputs=inputs)
        data_mask, data_inputs = brain_mask, dict(inputs, mask=brain_mask, mask_source="automatic")
    inputs["mask"] = brain_mask

    if config.per_echo:
        local_fields, chis, local_mask = [], [], data_mask.copy()
        for echo_field in per_echo_fields(unwrapped, echo_times):
            echo_chi, echo_local, echo_mask = _invert(run, echo_field, data_mask, voxel, data_inputs)
            chis.append(echo_chi)
            local_fields.append(echo_local)
            local_mask &= echo_mask
        local_field_hz = np.mean(local_fields, axis=0).astype(np.float32)
        chi = np.where(local_mask, np.mean(chis, axis=0), 0).astype(np.float32)
    else:
        chi, local_field_hz, local_mask = _invert(run, fit.total_field_hz, data_mask, voxel, data_inputs)
    if data_mask is not brain_mask:
        # chi and the local field are reported on the user's mask only: the data region is the automatic mask's
        local_mask = local_mask & brain_mask
        chi = np.where(local_mask, chi, np.float32(0))
        local_field_hz = np.where(local_mask, local_field_hz, np.float32(0))
    total_field_hz = fit.total_field_hz
    if acquisition is not scan:
        chi, local_field_hz, local_mask, brain_mask, total_field_hz, unwrapped, maps, inputs = _back_on_scan_grid(
            scan, acquisition, chi, local_field_hz, local_mask, brain_mask, total_field_hz, unwrapped, maps, inputs)
        magnitude, voxel = scan.magnitude, scan.voxel_size_mm
    if config.relaxometry.method != "none":
        maps.update(run("relaxometry", magnitude, echo_times, inputs=inputs))
    return _finish(
        run, chi, local_mask, labels, label_names, voxel, inputs,
        mask=brain_mask, local_field_hz=local_field_hz, total_field_hz=total_field_hz,
        unwrapped_phase=unwrapped, maps=maps,
    )


def _solving_acquisition(run: _Stages, scan: MultiEchoGRE) -> MultiEchoGRE:
    """The scan, or its echoes zero-filled onto the finer grid the configuration's ``zero_fill_mm`` asks for."""
    setting = run.config.zero_fill_mm
    # the grid "auto" would choose for TFI, so that a run with another inversion records why it kept the scan's grid
    solve_voxel_mm = solving_voxel_mm(setting, scan.voxel_size_mm)
    if solve_voxel_mm is None:
        return scan
    cut = cut_axes(scan.magnitude[0])
    shape = solving_shape(scan.spatial_shape, scan.voxel_size_mm, solve_voxel_mm, keep_axes=cut)
    if shape == scan.spatial_shape:
        return scan
    check_cancel(run.cancel)
    began = time.perf_counter()
    choice: dict[str, Any] = {"setting": setting}
    inversion = run.config.inversion.method
    if solving_voxel_mm(setting, scan.voxel_size_mm, inversion) is None:
        choice["reason"] = (
            f"the scan's grid: \"auto\" zero-fills only for the {' and '.join(AUTO_ZERO_FILL_INVERSIONS)} inversion, "
            f"whose automatic lambda follows the scan's voxels and which it was chosen with; {inversion}'s lambda "
            "follows the grid it runs on (a number in zero_fill_mm zero-fills with any inversion)")
        run.parameters["zero_fill"] = choice
        return scan
    if setting == "auto":
        ringing = ringing_excess(scan.magnitude[0])
        choice["ringing"] = {key: (round(value, 8) if isinstance(value, float) else value)
                             for key, value in ringing.items()}
        if not ringing["band_limited"]:
            choice["reason"] = (
                "the scan's grid: its magnitude does not ring outside the head as an image recorded in k-space "
                "does (simulated on its grid or box-averaged; zero-filling such data raised chi NRMSE on the "
                "validation suite)" if ringing["band_limited"] is False else
                "the scan's grid: too little air around the head to tell whether the data are band-limited")
            run.parameters["zero_fill"] = choice
            return scan
    report(run.progress, 0.0, "zero-filling the echoes onto a finer grid")
    fine = zero_filled_acquisition(scan, shape)
    run.timings["zero_fill"] = time.perf_counter() - began
    run.parameters["zero_fill"] = {
        **choice, "scan_shape": list(scan.spatial_shape), "solving_shape": list(shape),
        "solving_voxel_size_mm": [round(float(v), 4) for v in fine.voxel_size_mm],
        "axes_kept_as_cut": [axis for axis in range(3) if cut[axis]],
        "reason": (f"voxels coarser than {COARSE_FACTOR} x {solve_voxel_mm:g} mm"
                   + (" and band-limited data (the magnitude rings outside the head)" if setting == "auto" else "")
                   + ": the phase, field, mask and inversion stages ran on the zero-filled grid, chi and the local "
                   "field were brought back with the scan's k-space band, masks and other maps at the nearest fine "
                   "voxel"),
    }
    return fine


def _back_on_scan_grid(scan: MultiEchoGRE, fine: MultiEchoGRE, chi: np.ndarray, local_field_hz: np.ndarray,
                       local_mask: np.ndarray, brain_mask: np.ndarray, total_field_hz: np.ndarray,
                       unwrapped: np.ndarray, maps: dict, inputs: dict) -> tuple:
    """Every map of a zero-filled run on the scan's grid (:mod:`QSMLib.zero_fill`); chi and the local field masked."""
    shape = scan.spatial_shape
    coarse_local_mask = nearest_samples(local_mask, shape)
    chi_back, local_back = band_limited_back(np.stack([chi, local_field_hz]), local_mask, fine.voxel_size_mm, shape)
    zero = np.float32(0)

    def on_scan_grid(value: Any) -> Any:
        fine_map = isinstance(value, np.ndarray) and value.shape[-3:] == fine.spatial_shape
        return np.ascontiguousarray(nearest_samples(value, shape)) if fine_map else value

    coarse_inputs = {name: on_scan_grid(value) for name, value in inputs.items() if name != "acquired_voxel_size_mm"}
    coarse_inputs.update(magnitude=scan.magnitude, voxel_size_mm=scan.voxel_size_mm, invalid=scan.invalid_voxels)
    return (np.where(coarse_local_mask, chi_back, zero), np.where(coarse_local_mask, local_back, zero),
            coarse_local_mask, on_scan_grid(brain_mask), on_scan_grid(total_field_hz), on_scan_grid(unwrapped),
            {name: on_scan_grid(value) for name, value in maps.items()}, coarse_inputs)


def _check_echo_order(acquisition: MultiEchoGRE) -> dict[str, Any]:
    """How the head's magnitude decays and its phase evolves over the echoes, with a warning when either shows
    echoes out of order (the phase is judged when the magnitude passes)."""
    if acquisition.n_echoes < 2:
        return {}
    times_ms = [round(1000 * t, 2) for t in acquisition.echo_times_s]
    decay = magnitude_decay(acquisition.magnitude)
    if decay["largest_rise"] > ECHO_RISE_ALLOWED:
        k = decay["rise_after_echo"]
        warnings.warn(
            f"The magnitude rises by {100 * decay['largest_rise']:.0f} % over the head from echo {k} "
            f"({times_ms[k - 1]:g} ms) to echo {k + 1} ({times_ms[k]:g} ms), where a gradient echo decays: the echoes "
            "are probably not in the order of their echo times (e.g. files sorted as echo-1, echo-10, echo-2), and "
            f"the map will be wrong. Median magnitude per echo, relative to the first: {decay['relative_median']}. "
            "Give the magnitude and phase echoes in the order of the echo times.", QSMWarning, stacklevel=3)
        return decay
    # magnitudes in order, phases perhaps not (e.g. the two series sorted by different rules)
    evolution = phase_evolution(acquisition.magnitude, acquisition.phase, acquisition.echo_times_s)
    decay["phase"] = evolution
    if evolution["out_of_order"]:
        step, reference, pair, slope = evolution["failing"]

        def echoes(k: int) -> str:
            return f"echoes {k} and {k + step} ({times_ms[k - 1]:g} and {times_ms[k + step - 1]:g} ms)"

        warnings.warn(
            f"The phase does not evolve with the echo times as a field does: the frequency from {echoes(pair)} "
            f"is {slope:.2f} times that from {echoes(reference)}, where it is 1 for echoes in order. The phase "
            "echoes are probably not in the order of their echo times although the magnitudes are (e.g. the "
            "phase files sorted as echo-1, echo-10, echo-2), and the map will be wrong. Give the phase echoes in "
            "the order of the echo times.", QSMWarning, stacklevel=3)
    return decay


def _bipolar_readout(acquisition: MultiEchoGRE, config: PipelineConfig) -> tuple[bool, dict[str, Any]]:
    """Whether the even echoes get the bipolar correction, and how that was found out (empty: the acquisition said).

    The acquisition's own ``bipolar`` decides when it is True or False (with a warning when it is True and
    the stage is ``"none"``). When it is None (not known) and
    the bipolar stage is not ``"none"``, the echoes decide (:func:`~QSMLib.phase.bipolar.bipolar_score`
    above ``BIPOLAR_THRESHOLD_RAD``), with a warning when they look bipolar. Measured on the validation
    suite: the ten monopolar heads and the real in-vivo crop scored 0.0000-0.011 rad, the two bipolar
    ones 0.33-0.35. Left uncorrected, the 9-echo bipolar oblique head measured chi NRMSE 35.2 % against
    24.4 % corrected; two monopolar heads corrected as bipolar measured the same to 0.01 points.
    """
    if acquisition.bipolar and config.bipolar.method == "none":
        warnings.warn("The acquisition is bipolar but bipolar correction is 'none': even echoes keep their "
                      "readout phase error.", QSMWarning, stacklevel=3)
    if acquisition.bipolar is not None or config.bipolar.method == "none":
        return bool(acquisition.bipolar), {}
    if acquisition.n_echoes < 3:
        return False, {"readout": "taken as monopolar: fewer than 3 echoes cannot show a bipolar error"}
    score = bipolar_score(acquisition.phase, acquisition.magnitude, acquisition.echo_times_s)
    bipolar = score > BIPOLAR_THRESHOLD_RAD
    if bipolar:
        warnings.warn(f"The even echoes look like a bipolar readout (odd/even phase mismatch {score:.2f} rad): "
                      "they are corrected as bipolar. If the readout was monopolar, say so: --monopolar (qsm run), "
                      "bipolar=False (Python) or the bipolar stage 'none' (configuration).", QSMWarning, stacklevel=3)
    return bipolar, {"readout": "detected bipolar" if bipolar else "detected monopolar", "score_rad": score,
                     "threshold_rad": BIPOLAR_THRESHOLD_RAD}


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
    config, labels, label_names, progress, cancel
        As :func:`run_pipeline`.

    Returns
    -------
    QSMResult
        Without ``unwrapped_phase`` (and without ``total_field_hz`` when
        starting from a local field).

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()
    >>> config = PipelineConfig.from_dict({"inversion": {"method": "tkd"}})
    >>> result = run_pipeline_from_field(scan.local_field_hz, scan.brain_mask, field_kind="local",
    ...                                  voxel_size_mm=(1, 1, 1), b0_direction=(0, 0, 1), b0_tesla=3.0, config=config)
    >>> result.chi_ppm.shape, result.reference["reference"]
    ((32, 32, 32), 'whole_brain')
    """
    if field_kind not in ("total", "local"):
        raise QSMInputError(f"field_kind must be 'total' or 'local', got {field_kind!r}.")
    b0_tesla = check_field_strength(b0_tesla, source="b0_tesla")
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
    single_step = _lookup("inversion", config.inversion.method).takes_total_field
    stages = (["background"] if field_kind == "total" and not single_step else []) + ["inversion", "reference"] + (
        ["roi"] if labels is not None else []
    )
    run = _Stages(config, stages, progress, cancel, resolve_device(config.device))
    inputs: dict[str, Any] = {
        "b0_direction": tuple(b0_direction), "b0_tesla": b0_tesla, "voxel_size_mm": tuple(voxel_size_mm),
        "mask": brain_mask, "mask_source": "user", "labels": labels, "label_names": label_names,
    }
    if field_kind == "total":
        total_field_hz: Optional[np.ndarray] = field_hz
        chi, local_field_hz, local_mask = _invert(run, field_hz, brain_mask, voxel_size_mm, inputs)
    elif single_step:
        # told that the field is already local, a single-step method looks for no outside sources
        total_field_hz = None
        chi, local_field_hz, local_mask = _invert(run, field_hz, brain_mask, voxel_size_mm,
                                                  dict(inputs, background_removed=True))
    else:
        local_field_hz, local_mask, total_field_hz = np.where(brain_mask, field_hz, 0), brain_mask, None
        chi = run("inversion", local_field_hz, local_mask, voxel_size_mm, inputs=inputs).chi_ppm
    return _finish(
        run, chi, local_mask, labels, label_names, voxel_size_mm, inputs,
        mask=brain_mask, local_field_hz=local_field_hz, total_field_hz=total_field_hz,
    )


def _data_region(
    run: _Stages, user_mask: np.ndarray, magnitude: np.ndarray, voxel_size_mm: Sequence[float],
    inputs: Mapping[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Where the field is used when the user gives the mask: the automatic mask's reliable voxels, less far pieces.

    The automatic mask (the configured ``mask`` method, by default the phase-quality mask) marks the
    voxels whose phase is reliable, and the inversion solves on it as it does without a user's mask, but
    for large pieces far from the user's mask (``DATA_REGION_MARGIN_MM``: a face).
    Chi is reported on the user's mask only, so the user's voxels that fail the automatic mask's
    tests, and the band the inversion leaves out next to them, are not reported: their field is
    wrong by tens of Hz next to air at high field, and a user's brain mask usually stops at the
    brain's surface, where single-step inversion most needs data (the outside sources and the
    tissue are told apart there). Given the true brain masks of the fourteen validation suite
    heads, chi NRMSE on the reported voxels was 27.5 / 45.6 % (mean / worst; mean worst deep grey
    matter ROI error 6.17 ppb, with TFI's lambda of the time) against 29.0 / 57.5 % (6.72 ppb) when
    the user's voxels that fail the tests stayed in the solve without data weight and were reported,
    chi there coming from their neighbours (the previous design). Solving on the user's mask alone is
    worse still (7 T 2 mm, 1.5 T 2 mm and SNR-20 1.5 mm heads: 73.9 / 40.5 / 45.0 % against 58.2 /
    38.7 / 42.1 % with the zero-weighted voxels). Where the automatic mask cannot be made, or holds less than
    ``MIN_RELIABLE_SHARE`` of the user's mask (it has then failed on these data, and the user's
    mask is the better guide), the user's mask alone is the region, with a warning in the latter case.
    """
    chosen = run.parameters.setdefault("mask", {})
    chosen["source"] = "user"
    try:
        reliable = run("mask", magnitude, voxel_size_mm, inputs=inputs)
    except QSMInputError as error:
        chosen["data_region"] = f"the user's mask alone (no automatic mask: {error})"
        return user_mask, dict(inputs, mask=user_mask, mask_source="user")
    user_voxels = int(user_mask.sum())
    reliable_voxels = int((user_mask & reliable).sum())
    reliable_share = reliable_voxels / user_voxels
    if reliable_share < MIN_RELIABLE_SHARE:
        warnings.warn(f"The automatic mask holds only {100 * reliable_share:.0f} % of the given mask: the inversion "
                      "uses the field of the given mask alone, including voxels whose phase may be unreliable.",
                      QSMWarning, stacklevel=3)
        chosen["data_region"] = (f"the user's mask alone (the automatic mask holds {100 * reliable_share:.0f} % "
                                 f"of it, under {100 * MIN_RELIABLE_SHARE:.0f} %)")
        return user_mask, dict(inputs, mask=user_mask, mask_source="user")
    # the automatic mask can run on into the face where it touches the brain: far from the user's brain
    # its field is no help and its chi is not the brain's. Small pieces stay (a brainstem the field of view cuts
    # beyond the user's mask tells TFI that the tissue goes on beyond that face)
    far = reliable & ~dilate(user_mask, DATA_REGION_MARGIN_MM, voxel_size_mm)
    region = reliable & ~large_pieces(far, APPENDAGE_ML, voxel_size_mm)
    chosen.update(data_region=f"the reliable voxels (automatic mask) but pieces of over {APPENDAGE_ML:g} ml "
                              f"beyond {DATA_REGION_MARGIN_MM:g} mm of the user's mask; chi reported on the "
                              "user's mask",
                  user_voxels=user_voxels, added_voxels=int((region & ~user_mask).sum()),
                  unreliable_voxels=user_voxels - reliable_voxels,
                  beyond_margin_voxels=int((reliable & ~region).sum()))
    return region, dict(inputs, mask=region, mask_source="automatic")


#: Beyond this distance (mm) from a user's mask, pieces of the automatic mask over
#: :data:`~QSMLib.masking.APPENDAGE_ML` leave the data region (:func:`_data_region`). On the small warped head
#: with the 4 mm opening alone the automatic mask held the face, and this took chi NRMSE from 46.85 to 45.08 %
#: and the worst deep grey matter ROI error from 14.6 to 9.5 ppb (every voxel beyond 9 mm out; 6 mm: 45.25 %,
#: 8.9 ppb). Every voxel beyond 9 mm out would also take the brainstem where the field of view cuts it (2-5 ml
#: beyond the true brain masks of the suite's heads), and TFI's thicker shell beyond that face with it:
#: bipolar_oblique_9echo 19.00 against 18.17 %, qsmforward_1p06mm_2p89T 17.83 against 17.42 %.
DATA_REGION_MARGIN_MM = 9.0

#: The least share of a user's mask the automatic mask must hold to be the data region (:func:`_data_region`).
#: Of the fourteen validation suite heads' true brain masks it holds 0.958 (the 7 T k-space head, voxels next
#: to air) to 0.999; far below that, the automatic mask has failed rather than found unreliable voxels.
MIN_RELIABLE_SHARE = 0.5


def _invert(
    run: _Stages, total_field_hz: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float],
    inputs: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background removal then inversion, or one single-step inversion of the total field.

    Returns chi (ppm, not referenced), the local field (Hz) and the mask both
    are valid on. A single-step method has no separate local field: the
    field of its tissue susceptibility stands in for it.
    """
    if _lookup("inversion", run.config.inversion.method).takes_total_field:
        result = run("inversion", total_field_hz, mask, voxel_size_mm, inputs=inputs)
        valid = mask if result.mask is None else result.mask
        run.parameters.setdefault("background", {})["skipped"] = (
            f"inversion {run.config.inversion.method!r} removes the background itself")
        local = tissue_field_hz(result.chi_ppm, valid, voxel_size_mm, inputs["b0_direction"], inputs["b0_tesla"])
        return result.chi_ppm, local, valid
    local = run("background", total_field_hz, mask, voxel_size_mm, inputs=inputs)
    chi = run("inversion", local.local_field_hz, local.mask, voxel_size_mm, inputs=inputs).chi_ppm
    return chi, local.local_field_hz, local.mask


def tissue_field_hz(
    chi_ppm: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float], b0_direction: Sequence[float],
    b0_tesla: float,
) -> np.ndarray:
    """Field (Hz) inside ``mask`` of the susceptibility inside it: the local field a single-step method implies."""
    box = _fft.mask_bounding_box(mask, [0, 0, 0])
    inside = np.where(mask, chi_ppm, 0).astype(np.float32)[box]
    field = np.zeros(mask.shape, dtype=np.float32)
    field[box] = ppm_to_hz(forward_field(inside, voxel_size_mm, b0_direction, pad_factor=1.5), b0_tesla)
    field[~mask] = 0
    return field


#: :func:`fill_edge`'s Gaussian, mm. On the twelve validation suite heads (default pipeline, scored over the whole
#: true brain with unfilled voxels as 0) filling took chi NRMSE down on every one, by 0.7-6.7 points (mean / worst
#: 48.2 / 68.0 -> 44.6 / 67.1 % on the tuning heads, 43.0 / 45.5 -> 38.1 / 41.6 % on the held-out ones); 2 and 3
#: mm were worse on all ten heads tried. Scored as QSM-CI scores (the brain's voxels where chi is non-zero) the
#: filled voxels count and the same ten heads went from 32.3 / 48.6 to 39.0 / 54.7 %: hence off by default.
#: Mixing 30 % of the solve's own chi in the band (partial volumes of bone and air) into the fill was better on
#: eight of the ten (up to 1.4 points) and worse on two (up to 0.3): not worth a path through every inversion.
FILL_SIGMA_MM = 1.5


def fill_edge(chi_ppm: np.ndarray, mask: np.ndarray, reported: np.ndarray,
              voxel_size_mm: Sequence[float]) -> np.ndarray:
    """chi on all of ``mask``: voxels outside ``reported`` get the Gaussian-weighted mean of the reported chi around.

    The weights are a Gaussian of ``FILL_SIGMA_MM`` over the reported voxels
    (normalised convolution); voxels with almost no reported voxel within
    reach (weights below 1 %) stay 0.

    Parameters
    ----------
    chi_ppm : numpy.ndarray of float32, shape (n0, n1, n2)
        Susceptibility, ppm, on ``reported`` (0 elsewhere).
    mask, reported : numpy.ndarray of bool, shape (n0, n1, n2)
        The brain mask and the voxels the inversion reported.
    voxel_size_mm : sequence of 3 float

    Returns
    -------
    numpy.ndarray of float32
        A new map; equal to ``chi_ppm`` on ``reported``.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((9, 9, 9), bool); mask[1:8, 1:8, 1:8] = True
    >>> reported = np.zeros_like(mask); reported[3:6, 3:6, 3:6] = True
    >>> chi = np.where(reported, np.float32(0.05), np.float32(0))
    >>> filled = fill_edge(chi, mask, reported, (1.0, 1.0, 1.0))
    >>> round(float(filled[2, 4, 4]), 3), float(filled[0, 4, 4])  # a neighbour of the reported block; outside
    (0.05, 0.0)
    """
    band = mask & ~reported
    if not band.any() or not reported.any():
        return chi_ppm
    box = _fft.mask_bounding_box(mask, [0, 0, 0])
    # zeros beyond the box are what the filter would see there anyway: no reported voxel lies outside the mask
    weighted, weights = masked_smoothing(chi_ppm[box], reported[box], FILL_SIGMA_MM, voxel_size_mm)
    filled = chi_ppm.copy()
    in_band = band[box] & (weights > 0.01)
    filled[box][in_band] = weighted[in_band] / weights[in_band]
    return filled


#: Deep grey matter ROI errors (ppb) that :func:`_check_coverage`'s warning quotes, measured with stop 48's
#: defaults (SS-TV's fine detail blended on slabs too): the worst on the validation suite's seven slabs
#: (``SLAB_CASES`` and ``slab_0p7mm_7T``; 24.3 with stop 47's, 24.0 with stop 46's, 20.3 with stop 40's), and the
#: per-scan worst averaged over those slabs (11.9 at stop 47, 12.3 at stop 46) and over the suite's thirteen whole
#: heads (four of them textured; 22.6 ppb on the worst, the 2 mm textured head).
SLAB_ROI_ERROR_PPB = 24.0
SLAB_MEAN_ROI_ERROR_PPB = 10.6
WHOLE_HEAD_MEAN_ROI_ERROR_PPB = 8.5


def _check_coverage(run: _Stages, mask: np.ndarray, voxel_size_mm: Sequence[float],
                    b0_direction: Sequence[float]) -> None:
    """Record how the field of view covers the brain along B0, and warn when it cuts the brain (a slab).

    Susceptibility that changes steadily along B0 across a slab makes a field, nearly linear inside it,
    that sources beyond its faces make too: no inversion can tell the two apart, and a prior sets that
    trend (TFI the one the tissue's own total variation prefers: ``level_slab_trend``). On the suite's slabs
    the true trend across the slab was 16-25 ppb (28 ppb on a held-out one), and the deep grey matter ROI
    errors follow it (largest at the faces).
    """
    coverage = coverage_along_b0(mask, voxel_size_mm, b0_direction)
    run.parameters["coverage_along_b0"] = coverage
    if coverage["slab"]:
        warnings.warn(
            f"The field of view cuts the brain at both ends along B0 ({', '.join(coverage['cut_faces'])}; "
            f"{coverage['extent_mm']:.0f} mm covered): a slab. A steady change of susceptibility along B0 "
            "across it cannot be told from background fields, so a prior sets it; on the validation suite's slabs "
            f"(40-80 mm) deep grey matter ROI means were off by up to {SLAB_ROI_ERROR_PPB:g} ppb, the worst ROI "
            f"of a slab by {SLAB_MEAN_ROI_ERROR_PPB:g} ppb on average (of a whole head: "
            f"{WHOLE_HEAD_MEAN_ROI_ERROR_PPB:g} ppb). Compare ROI values between scans of the same coverage only, or "
            "cover the whole brain along B0.", QSMWarning, stacklevel=4)


def _check_sign(run: _Stages, chi: np.ndarray, local_mask: np.ndarray, voxel_size_mm: Sequence[float],
                phase_sign: Optional[int]) -> None:
    """Record the map's tail asymmetry, and warn when the map looks negated (phase of the other handedness).

    ``phase_sign`` is the acquisition's (None: the pipeline was given a field, not phase).
    """
    check = chi_tail_asymmetry(chi, local_mask, voxel_size_mm)
    run.parameters["sign_check"] = check
    if not check.get("reversed"):
        return
    if phase_sign is None:
        advice = ("The field map was probably computed from phase of the other handedness: negate it and rerun, or "
                  "give the multi-echo phase with the right sign.")
    else:
        other = -phase_sign
        advice = (f"The phase was probably stored with the other handedness (e.g. some GE data): rerun with "
                  f"phase_sign={other} (--phase-sign {other} for qsm run and qsm bids; in Slicer, Phase sign: "
                  f"{'Reversed' if other == -1 else 'As stored'}).")
    warnings.warn(
        f"The susceptibility map looks sign-reversed: deep in the brain its negative tail reaches "
        f"{check['negative_tail_ppm']:.3f} ppm below the median and its positive tail only "
        f"{check['positive_tail_ppm']:.3f} ppm above (tail asymmetry "
        f"{check['tail_asymmetry']:+.2f}), where a brain's map has the long positive tail of its veins and "
        f"iron-rich nuclei. {advice}", QSMWarning, stacklevel=4)


def _finish(
    run: _Stages,
    chi: np.ndarray,
    local_mask: np.ndarray,
    labels: Optional[np.ndarray],
    label_names: Optional[Mapping[int, str]],
    voxel_size_mm: Sequence[float],
    inputs: Mapping[str, Any],
    **intermediates: Any,
) -> QSMResult:
    """Reference chi, add the whole-brain reference the consensus asks for, compute ROI statistics."""
    _check_coverage(run, intermediates["mask"], voxel_size_mm, inputs["b0_direction"])
    _check_sign(run, chi, local_mask, voxel_size_mm, inputs.get("phase_sign"))
    referenced = run("reference", chi, local_mask, inputs=inputs)
    reference = dict(referenced.info)
    chi_ppm = referenced.chi_ppm
    if run.config.reference.method != "whole_brain":
        brain_referenced = chi[local_mask] - chi[local_mask].mean()
        reference["whole_brain_mean_ppm"] = float(chi_ppm[local_mask].mean())
        reference["whole_brain_sd_ppm"] = float(brain_referenced.std())
    else:
        reference["whole_brain_sd_ppm"] = float(chi_ppm[local_mask].std())
    rows: list[dict] = []
    if labels is not None:
        check_cancel(run.cancel)
        began = time.perf_counter()
        rows = roi_statistics(chi_ppm, labels, voxel_size_mm, label_names=label_names, mask=local_mask)
        run.timings["roi"] = time.perf_counter() - began
    if run.config.fill_edge:
        filled = fill_edge(chi_ppm, intermediates["mask"], local_mask, voxel_size_mm)
        run.parameters["fill_edge"] = {"sigma_mm": FILL_SIGMA_MM,
                                       "filled_voxels": int(np.count_nonzero(filled != chi_ppm))}
        chi_ppm = filled
    report(run.progress, 1.0, "done: finished")
    return QSMResult(
        chi_ppm=chi_ppm, local_mask=local_mask, reference=reference, roi=rows, timings_s=dict(run.timings),
        parameters=run.parameters, config=run.config, device={
            "requested": run.config.device, "used": run.device.description, "stages": run.device_stages},
        **intermediates,
    )
