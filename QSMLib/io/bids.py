"""BIDS JSON sidecars: echo times and field strength next to image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import QSMInputError
from ..units import b0_from_imaging_frequency


def sidecar_path(image_path: Path) -> Path:
    """The BIDS sidecar of an image: same name with ``.json`` for ``.nii``/``.nii.gz``."""
    name = image_path.name
    for extension in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(extension):
            return image_path.with_name(name[: -len(extension)] + ".json")
    return image_path.with_suffix(".json")


def read_sidecar(image_path: Path) -> dict[str, Any]:
    """Parsed sidecar of ``image_path``, or an empty dict when there is none."""
    path = sidecar_path(Path(image_path))
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise QSMInputError(f"Cannot read the JSON sidecar {path}: {error}. Fix or remove it.") from None


def echo_times_from_sidecars(sidecars: list[dict[str, Any]]) -> Optional[list[float]]:
    """Echo times (s) from ``EchoTime`` entries: one per file, or a list in one file."""
    times: list[float] = []
    for sidecar in sidecars:
        value = sidecar.get("EchoTime")
        if value is None:
            return None
        times.extend(float(t) for t in (value if isinstance(value, list) else [value]))
    return times or None


def field_strength_from_sidecars(sidecars: list[dict[str, Any]]) -> tuple[Optional[float], str]:
    """Field strength (T) and where it came from.

    ``ImagingFrequency`` (MHz) wins over ``MagneticFieldStrength``: scanners
    labelled 3 T often run at 2.89 T.
    """
    for sidecar in sidecars:
        if sidecar.get("ImagingFrequency"):
            return b0_from_imaging_frequency(float(sidecar["ImagingFrequency"])), "ImagingFrequency"
    for sidecar in sidecars:
        if sidecar.get("MagneticFieldStrength"):
            return float(sidecar["MagneticFieldStrength"]), "MagneticFieldStrength"
    return None, "none"
