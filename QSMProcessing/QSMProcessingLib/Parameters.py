"""Presets, stage methods, their readable names and parameters, and the custom configuration (no Qt).

This file is the one place that maps what the module shows (readable method
names, the regularisation field's label, unit and default) to QSMLib's
registry names and keyword arguments; update it when QSMLib's methods or
defaults change (``Testing/test_slicer_extension.py`` compares it with QSMLib).

A custom configuration is a partial QSMLib ``PipelineConfig`` dictionary:
stages not named keep the ``consensus`` defaults, and a method's parameters
not named keep the defaults of its QSMLib function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

#: Named QSMLib presets the module offers, with the names shown in the Preset box.
PRESETS = {
    "consensus": "ISMRM consensus (2024): total field inversion",
    "fast": "Fast: single-step TV (no background step)",
}
#: The preset built from the Advanced section.
CUSTOM_PRESET = "custom"
PRESET_LABELS = {**PRESETS, CUSTOM_PRESET: "Custom (Advanced section)"}

#: Methods offered per stage in the Advanced section: QSMLib registry name -> name shown.
UNWRAP_METHODS = {"romeo": "ROMEO (path based)", "laplacian": "Laplacian"}
BACKGROUND_METHODS = {
    "ismv": "iSMV (iterative SMV)",
    "vsharp": "V-SHARP",
    "resharp": "RESHARP",
    "pdf": "PDF (projection onto dipole fields)",
    "lbv": "LBV (Laplacian boundary value)",
}
#: ``tfi`` and ``sstv`` invert the total field: the background method is then not used.
INVERSION_METHODS = {
    "tfi": "Total field inversion with single-step TV (no background step)",
    "sstv": "Single-step TV (no background step)",
    "medi": "MEDI",
    "tv": "Linear TV (FANSI)",
    "nltv": "Nonlinear TV (FANSI)",
    "rts": "RTS (rapid two-step)",
    "l2": "Closed-form L2",
    "tkd": "TKD (truncated k-space division)",
}
REFERENCE_METHODS = {"whole_brain": "Whole brain", "csf": "CSF (lateral ventricles)"}
#: Stage name -> methods offered for it.
STAGE_METHODS = {
    "unwrap": UNWRAP_METHODS,
    "background": BACKGROUND_METHODS,
    "inversion": INVERSION_METHODS,
    "reference": REFERENCE_METHODS,
}

#: Where ROI statistics come from (the ROIs box): a segmentation the user chose (or none), or the
#: deep grey matter structures of the AAL3 atlas registered to the magnitude (``qsm run --rois atlas``).
ROI_SOURCES = {"segmentation": "From a segmentation", "atlas": "Automatic deep grey matter (atlas)"}

#: The readout of the echoes (QSMLib's ``--bipolar`` / ``--monopolar``, or neither): name -> name shown.
#: "detect" lets QSMLib correct the even echoes when they look bipolar (it says so in the log).
READOUTS = {"detect": "Detect from the echoes", "bipolar": "Bipolar", "monopolar": "Monopolar"}

#: The handedness of the phase (QSMLib's ``--phase-sign``): name -> name shown. "reversed" negates the phase
#: (``--phase-sign -1``: left-handed data, e.g. some GE); QSMLib warns when a map looks negated.
PHASE_SIGNS = {"as_stored": "As stored (most scanners)", "reversed": "Reversed (left-handed phase, e.g. some GE)"}

#: Where background removal and the inversion run (QSMLib's ``--device``): QSMLib name -> name shown.
DEVICES = {"cpu": "CPU", "auto": "GPU if there is one, else CPU", "cuda": "GPU (CUDA)"}

#: Shown in the regularisation field when no value is typed: QSMLib's default decides.
AUTOMATIC_TEXT = "Automatic"


@dataclass(frozen=True)
class MethodParameter:
    """The one parameter of a method that the Advanced section exposes.

    Attributes
    ----------
    keyword : str
        QSMLib keyword argument of the method.
    label : str
        Shown left of the field.
    unit : str
        Shown after the value ("" for a pure number).
    default : float, str or None
        QSMLib's default today; None or ``"auto"`` where QSMLib derives it
        from the data.
    defaultText : str
        How the default is described in the field's tooltip.
    decimals, step : int, float
        Precision and arrow step of the field.
    """

    keyword: str
    label: str
    unit: str
    default: Union[float, str, None]
    defaultText: str
    decimals: int
    step: float


_TV_REGULARIZATION = MethodParameter(
    "regularization", "Regularization λ", "ppm·mm", "auto",
    "chosen from the noise of the field and recorded in the log", 5, 0.00005)

#: The inversion parameter per method. Its field's "Automatic" (0) passes nothing: QSMLib's default decides.
INVERSION_PARAMETERS = {
    "tfi": _TV_REGULARIZATION,
    "sstv": _TV_REGULARIZATION,
    "medi": MethodParameter("regularization", "Regularization λ", "", "auto",
                            "a data weight chosen from the noise of the field and recorded in the log", 1, 10.0),
    "tv": _TV_REGULARIZATION,
    "nltv": _TV_REGULARIZATION,
    # RTS's lambda weighs its TV against the measured frequencies: 1e-3-2e-2 ppm mm on the suite's heads
    "rts": MethodParameter("regularization", "Regularization λ", "ppm·mm", "auto",
                           "chosen from the noise of the field and recorded in the log", 5, 0.0005),
    "l2": MethodParameter("regularization", "Regularization λ", "mm²", "auto",
                          "chosen from the field's noise-to-signal ratio and recorded in the log", 4, 0.001),
    "tkd": MethodParameter("threshold", "Kernel threshold", "", 0.19, "0.19", 3, 0.01),
}
#: Background methods with a kernel radius (the Advanced section's radius field).
BACKGROUND_RADIUS = {"vsharp": MethodParameter("max_radius_mm", "Largest kernel radius", "mm", 12.0, "12 mm", 1, 1.0)}


def inversionParameterTooltip(method: str) -> str:
    """Tooltip of the inversion parameter field for ``method``."""
    parameter = INVERSION_PARAMETERS[method]
    return (f"{parameter.label} of {INVERSION_METHODS[method]}. {AUTOMATIC_TEXT} (0): QSMLib chooses it "
            f"(today {parameter.defaultText}). Type a value to override it.")


def customConfig(
    unwrapMethod: str,
    backgroundMethod: str,
    backgroundRadiusMm: float,
    inversionMethod: str,
    inversionParameter: float,
    referenceMethod: str,
) -> dict[str, Any]:
    """Pipeline configuration dictionary from the Advanced section's choices.

    Parameters
    ----------
    unwrapMethod, backgroundMethod, inversionMethod, referenceMethod : str
        QSMLib method names (keys of :data:`STAGE_METHODS`' tables).
    backgroundRadiusMm : float
        Largest spherical kernel radius (mm) for V-SHARP; ignored by methods without one.
    inversionParameter : float
        The inversion method's parameter (see :data:`INVERSION_PARAMETERS`); 0 means
        automatic: nothing is passed and QSMLib's default decides.

    Raises
    ------
    ValueError
        For a method this module does not offer, or a negative or non-finite parameter.
    """
    choices = {"unwrap": unwrapMethod, "background": backgroundMethod, "inversion": inversionMethod,
               "reference": referenceMethod}
    for stage, method in choices.items():
        if method not in STAGE_METHODS[stage]:
            raise ValueError(f"Unknown {stage} method {method!r}; choose one of {', '.join(STAGE_METHODS[stage])}.")
    parameter = INVERSION_PARAMETERS[inversionMethod]
    if not math.isfinite(inversionParameter) or inversionParameter < 0:
        raise ValueError(
            f"{parameter.label} of {INVERSION_METHODS[inversionMethod]} must be positive, or 0 for "
            f"{AUTOMATIC_TEXT.lower()}; got {inversionParameter}.")
    if backgroundMethod in BACKGROUND_RADIUS and not (math.isfinite(backgroundRadiusMm) and backgroundRadiusMm > 0):
        raise ValueError(f"The background kernel radius must be positive (mm), got {backgroundRadiusMm}.")
    config: dict[str, Any] = {stage: {"method": method, "params": {}} for stage, method in choices.items()}
    if backgroundMethod in BACKGROUND_RADIUS:
        config["background"]["params"][BACKGROUND_RADIUS[backgroundMethod].keyword] = float(backgroundRadiusMm)
    if inversionParameter > 0:
        config["inversion"]["params"][parameter.keyword] = float(inversionParameter)
    return config


def parseEchoTimesMs(text: str) -> list[float]:
    """Echo times typed in milliseconds (``"4, 8, 12"``) -> seconds.

    Raises
    ------
    ValueError
        When a value is not a number.
    """
    try:
        return [float(value) / 1000.0 for value in text.replace(";", ",").split(",") if value.strip()]
    except ValueError:
        raise ValueError(
            f"Echo times {text!r} must be numbers in ms separated by commas, e.g. 4.0, 8.0, 12.0."
        ) from None


def formatEchoTimesMs(echoTimesSeconds: Sequence[float]) -> str:
    """Echo times in seconds as the text typed in the module (ms, comma separated)."""
    return ", ".join(f"{t * 1000:g}" for t in echoTimesSeconds)
