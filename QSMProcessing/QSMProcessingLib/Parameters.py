"""Presets, stage methods and the custom configuration built from the Advanced section.

A custom configuration is a partial QSMLib ``PipelineConfig`` dictionary:
stages not named keep the ``consensus`` defaults, and a method's parameters
not named keep the defaults of its QSMLib function.
"""

from __future__ import annotations

from typing import Any

#: Named QSMLib presets the module offers (``custom`` is built from the Advanced section).
PRESETS = ("consensus", "fast")
CUSTOM_PRESET = "custom"

#: Methods offered per stage in the Advanced section (QSMLib registry names).
UNWRAP_METHODS = ("romeo", "laplacian")
BACKGROUND_METHODS = ("ismv", "vsharp", "resharp", "pdf", "lbv")
#: ``tfi`` (the default) inverts the total field: the background method is then not used.
INVERSION_METHODS = ("tfi", "tv", "nltv", "medi", "rts", "l2", "tkd")
REFERENCE_METHODS = ("whole_brain", "csf")

#: The one main parameter per method the Advanced section exposes: (keyword, QSMLib default).
#: A default of None or "auto" means QSMLib chooses the value itself (shown and entered as 0).
BACKGROUND_MAIN_PARAMETER = {"vsharp": ("max_radius_mm", 12.0)}
INVERSION_MAIN_PARAMETER = {
    "tfi": ("regularization", "auto"),
    "tv": ("regularization", "auto"),
    "nltv": ("regularization", "auto"),
    "medi": ("regularization", 100.0),
    "rts": ("delta", 0.15),
    "l2": ("regularization", None),
    "tkd": ("threshold", 0.19),
}


def isAutomatic(inversionMethod: str) -> bool:
    """Whether QSMLib chooses the inversion's main parameter itself by default (entered as 0)."""
    return INVERSION_MAIN_PARAMETER[inversionMethod][1] in (None, "auto")


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
        QSMLib method names (see the ``*_METHODS`` tuples).
    backgroundRadiusMm : float
        Largest spherical kernel radius (mm) for V-SHARP; ignored by methods without one.
    inversionParameter : float
        The inversion method's main parameter (see :data:`INVERSION_MAIN_PARAMETER`); 0 leaves
        the choice to QSMLib where its default is automatic.

    Raises
    ------
    ValueError
        For a method this module does not offer, or a non-positive parameter.
    """
    choices = {
        "unwrap": (unwrapMethod, UNWRAP_METHODS),
        "background": (backgroundMethod, BACKGROUND_METHODS),
        "inversion": (inversionMethod, INVERSION_METHODS),
        "reference": (referenceMethod, REFERENCE_METHODS),
    }
    for stage, (method, offered) in choices.items():
        if method not in offered:
            raise ValueError(f"Unknown {stage} method {method!r}; choose one of {', '.join(offered)}.")
    automatic = isAutomatic(inversionMethod) and inversionParameter == 0
    if backgroundRadiusMm <= 0 or (inversionParameter <= 0 and not automatic):
        raise ValueError("The background radius and the inversion parameter must be positive.")
    config: dict[str, Any] = {stage: {"method": method, "params": {}} for stage, (method, _) in choices.items()}
    if backgroundMethod in BACKGROUND_MAIN_PARAMETER:
        config["background"]["params"][BACKGROUND_MAIN_PARAMETER[backgroundMethod][0]] = float(backgroundRadiusMm)
    if not automatic:
        config["inversion"]["params"][INVERSION_MAIN_PARAMETER[inversionMethod][0]] = float(inversionParameter)
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
