"""The stage contract: what a registry entry declares and what each stage returns.

Every stage of the pipeline picks its method by name from a registry (a
dict of name -> :class:`Method`). A :class:`Method` names its function and
the pipeline inputs it takes beyond the stage's positional data (echo times,
magnitude, B0, the echo fit's reliability maps...); ``run_pipeline`` passes
exactly those. Everything else in the function's keyword-only signature is a
user parameter with a default (from the paper or measured, documented in the
docstring).

Positional data per stage, and the result type every method of it returns:

============  ===========================================================  ======================
stage         positional arguments                                         returns
============  ===========================================================  ======================
phase_offset  phase (echo, n0, n1, n2) rad, magnitude, echo_times_s,      :class:`PhaseResult`
bipolar       voxel_size_mm                                                :class:`PhaseResult`
unwrap                                                                     :class:`PhaseResult`
echo_fit      unwrapped phase, magnitude, echo_times_s                     :class:`FieldMapResult`
mask          magnitude (echo, n0, n1, n2), voxel_size_mm                  ``numpy.ndarray`` of bool
background    total_field_hz, mask, voxel_size_mm                          :class:`BackgroundResult`
inversion     local_field_hz, mask, voxel_size_mm                          :class:`InversionResult`
reference     chi_ppm, mask                                                :class:`ReferenceResult`
relaxometry   magnitude, echo_times_s                                      ``dict`` of maps
============  ===========================================================  ======================

Every method also accepts ``progress`` (callable(fraction, message)) and
``cancel`` (callable() -> bool or threading.Event) when it loops.

Results are named tuples: fields by name (``result.local_field_hz``) or by
unpacking (``local_field_hz, mask, parameters = vsharp(...)``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

#: Pipeline inputs a method may declare, with what the pipeline passes for each.
PIPELINE_INPUTS: dict[str, str] = {
    "magnitude": "multi-echo magnitude, (echo, n0, n1, n2), arbitrary units",
    "echo_times_s": "echo times in seconds, increasing",
    "b0_tesla": "field strength in tesla",
    "b0_direction": "unit B0 direction in array-axis coordinates",
    "voxel_size_mm": "voxel size in mm per array axis (for stages that do not take it positionally)",
    "invalid": "bool (n0, n1, n2): voxels that were NaN or infinite in the input",
    "field_weight": "echo-fit reliability in [0, 1] (inverse field standard deviation, normalised)",
    "fit_residual_rad": "RMS phase residual of the echo fit, radians",
    "field_sd_hz": "noise standard deviation of the echo fit's field per voxel, Hz (0 where undetermined)",
    "romeo_quality": "ROMEO's voxel quality in [0, 1]",
    "total_field_hz": "total field of the echo fit, Hz (for stages after it that do not take it positionally)",
    "background_removed": "True when the field a single-step inversion gets is already a local field",
    "acquired_voxel_size_mm": "the scan's voxel size in mm when the stages run on a zero-filled finer grid "
                              "(QSMLib.zero_fill): automatic choices that follow the data's resolution use it",
    "device": "where the solver runs: the configuration's device, resolved (QSMLib._backend.Device)",
    "phase_offset_rad": "echo-independent phase offset removed by the offset stage, radians",
    "overwrite_phase": "True when a phase stage may write its result into the phase it is given (the "
                       "pipeline's own intermediate, or an array the caller handed over)",
    "mask": "the brain mask (for stages that do not take it positionally)",
    "mask_source": "'automatic' when the stage's mask is the pipeline's own (it reaches into the extracerebral "
                   "CSF), 'user' when it is the brain mask the user gave",
    "labels": "int label map (0 = background), when the user gave one",
    "label_names": "label value -> name, when known",
}

#: The empty, read-only default of result fields that hold maps or parameters.
_NOTHING: Mapping[str, Any] = MappingProxyType({})

#: Keyword arguments every looping method takes from the pipeline, never from the user.
CONTROL_ARGUMENTS = frozenset({"progress", "cancel"})


@dataclass(frozen=True)
class Method:
    """A registry entry: a stage function and the pipeline inputs it takes.

    Calling the entry calls the function, so ``METHODS["tv"](field, mask, voxel)``
    works as the function itself does.

    Parameters
    ----------
    function : callable
        The method, with the stage's positional data first (see the module
        docstring) and keyword-only arguments after.
    inputs : tuple of str
        Keyword arguments that the pipeline supplies (names from
        :data:`PIPELINE_INPUTS`); each must be a keyword-only parameter of
        ``function``.
    takes_total_field : bool
        For inversion methods: the positional field is the total field
        (background included) and the method removes the background itself
        (single-step QSM such as total field inversion), so the pipeline
        skips background removal.

    Examples
    --------
    >>> def smooth(field, mask, voxel_size_mm, *, b0_tesla, radius_mm=5.0, progress=None, cancel=None):
    ...     return field
    >>> entry = Method(smooth, inputs=("b0_tesla",))
    >>> sorted(entry.tunable_parameters())
    ['radius_mm']
    """

    function: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    takes_total_field: bool = False

    def __post_init__(self) -> None:
        unknown = [name for name in self.inputs if name not in PIPELINE_INPUTS]
        if unknown:
            raise ValueError(f"{self.function.__name__} declares unknown pipeline input(s) {unknown}.")
        keyword_only = self._keyword_only()
        missing = [name for name in self.inputs if name not in keyword_only]
        if missing:
            raise ValueError(f"{self.function.__name__} declares input(s) {missing} that are not keyword-only "
                             "parameters of it.")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def _keyword_only(self) -> dict[str, inspect.Parameter]:
        return {name: parameter for name, parameter in inspect.signature(self.function).parameters.items()
                if parameter.kind == parameter.KEYWORD_ONLY}

    def tunable_parameters(self) -> set[str]:
        """Keyword-only parameters a user may set (not pipeline inputs, not progress/cancel)."""
        return set(self._keyword_only()) - set(self.inputs) - CONTROL_ARGUMENTS

    def accepts_control(self) -> set[str]:
        """Which of ``progress`` and ``cancel`` the function accepts."""
        return set(self._keyword_only()) & CONTROL_ARGUMENTS


class PhaseResult(NamedTuple):
    """Result of a phase stage (offset removal, bipolar correction, unwrapping).

    Attributes
    ----------
    phase : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Phase in radians (wrapped after offset and bipolar correction,
        unwrapped after unwrapping).
    maps : mapping of str to numpy.ndarray
        Maps the stage estimated, e.g. ``phase_offset_rad`` or
        ``romeo_quality`` (names from :data:`PIPELINE_INPUTS` where later
        stages use them).
    """

    phase: np.ndarray
    maps: Mapping[str, np.ndarray] = _NOTHING


class FieldMapResult(NamedTuple):
    """Result of the echo fit.

    Attributes
    ----------
    total_field_hz : numpy.ndarray of float32, shape (n0, n1, n2)
        Total field in Hz.
    maps : mapping of str to numpy.ndarray
        ``field_weight`` (reliability in [0, 1]), ``fit_residual_rad`` and
        any other map the fit produced.
    """

    total_field_hz: np.ndarray
    maps: Mapping[str, np.ndarray] = _NOTHING


class BackgroundResult(NamedTuple):
    """Result of background field removal.

    Attributes
    ----------
    local_field_hz : numpy.ndarray of float32, shape (n0, n1, n2)
        Local field in Hz, zero outside ``mask``.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where the local field is valid (the input mask, possibly eroded).
    parameters : mapping
        Values the method chose from the data (e.g. a regularisation
        weight) and how, for provenance; empty when nothing was chosen.
    """

    local_field_hz: np.ndarray
    mask: np.ndarray
    parameters: Mapping[str, Any] = _NOTHING


class InversionResult(NamedTuple):
    """Result of dipole inversion.

    Attributes
    ----------
    chi_ppm : numpy.ndarray of float32, shape (n0, n1, n2)
        Susceptibility in ppm, zero outside the mask, not yet referenced.
    parameters : mapping
        Values the method chose from the data (e.g. ``regularization`` and
        the rule that chose it, the effective echo time) for provenance and
        the Slicer log; empty when nothing was chosen.
    mask : numpy.ndarray of bool, optional
        Where chi is valid when that is less than the input mask (a
        single-step method that leaves out the mask's outer layer); None:
        the input mask.
    """

    chi_ppm: np.ndarray
    parameters: Mapping[str, Any] = _NOTHING
    mask: Optional[np.ndarray] = None


class ReferenceResult(NamedTuple):
    """Result of referencing.

    Attributes
    ----------
    chi_ppm : numpy.ndarray of float32, shape (n0, n1, n2)
        Referenced susceptibility in ppm, zero outside the mask.
    info : mapping
        ``reference`` (what the zero is), ``offset_ppm`` (value
        subtracted), ``voxels`` (size of the reference region) and details.
    """

    chi_ppm: np.ndarray
    info: Mapping[str, Any] = _NOTHING
