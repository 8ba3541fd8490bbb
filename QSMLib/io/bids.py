"""BIDS: JSON sidecars (echo times, field strength), file names, dataset descriptions.

Also atomic text/JSON writes (temporary file + rename) for every small file
that batch processing and DICOM conversion produce.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import QSMInputError
from ..units import b0_from_imaging_frequency
from .files import temporary_beside


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


# --- BIDS file names, datasets and atomic text files -------------------------------------------

#: Entity order of BIDS file names (BIDS 1.10 appendix "Entity table", anatomy and derivatives).
ENTITY_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt",
                "part", "chunk", "space", "res", "den", "label", "desc")
#: Version of the BIDS specification that the files written here follow.
BIDS_VERSION = "1.10.0"
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def parse_bids_name(name: str) -> Optional[tuple[dict[str, str], str, str]]:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str
        A file name such as ``sub-01_ses-a_echo-2_part-phase_MEGRE.nii.gz``.

    Returns
    -------
    (entities, suffix, extension) or None
        ``({"sub": "01", "ses": "a", "echo": "2", "part": "phase"}, "MEGRE", ".nii.gz")``
        (entities in file order); None when the name is not of the form
        ``key-value[_key-value...]_suffix.ext`` with alphanumeric keys and values.
    """
    extension = next((e for e in (*_NIFTI_EXTENSIONS, ".json", ".tsv") if name.endswith(e)), None)
    if extension is None:
        return None
    *pairs, suffix = name[: -len(extension)].split("_")
    if not pairs or not suffix.isalnum():
        return None
    entities: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("-")
        if not (key.isalnum() and value.isalnum()) or key in entities:
            return None
        entities[key] = value
    return entities, suffix, extension


def bids_name(entities: dict[str, str], suffix: str, extension: str) -> str:
    """Compose a BIDS file name; entities are written in :data:`ENTITY_ORDER` (unknown ones last)."""
    order = {key: index for index, key in enumerate(ENTITY_ORDER)}
    keys = sorted(entities, key=lambda key: order.get(key, len(order)))
    return "_".join([*(f"{key}-{entities[key]}" for key in keys), suffix]) + extension


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Readers see either the old file or the complete new one, never a part.
    """
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Union[str, Path], data: Any) -> Path:
    """Write ``data`` as indented JSON with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=json_value) + "\n")


def json_value(value: Any) -> Any:
    """``json.dumps`` default for what results hold: numpy scalars and arrays, paths.

    Examples
    --------
    >>> import json, numpy as np
    >>> json.dumps({"voxels": np.int64(3), "size": np.array([1.0, 2.0])}, default=json_value)
    '{"voxels": 3, "size": [1.0, 2.0]}'
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot serialise {type(value).__name__}")


def dataset_description(name: str, dataset_type: str, *, generated_by: Optional[list[dict[str, Any]]] = None,
                        source_datasets: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """Contents of a BIDS ``dataset_description.json``.

    Parameters
    ----------
    name : str
        The dataset's name.
    dataset_type : {"raw", "derivative"}
        Derivative datasets must name what generated them (``generated_by``).
    generated_by : list of dict, optional
        ``GeneratedBy`` entries (``Name``, ``Version``, ``CodeURL``, ...).
    source_datasets : list of dict, optional
        ``SourceDatasets`` entries (``URL``, ``DOI``, ``Version``).
    """
    if dataset_type not in ("raw", "derivative"):
        raise QSMInputError(f"dataset_type must be 'raw' or 'derivative', got {dataset_type!r}.")
    if dataset_type == "derivative" and not generated_by:
        raise QSMInputError("A derivative dataset must say what generated it (generated_by).")
    description: dict[str, Any] = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": dataset_type}
    if generated_by:
        description["GeneratedBy"] = generated_by
    if source_datasets:
        description["SourceDatasets"] = source_datasets
    return description
