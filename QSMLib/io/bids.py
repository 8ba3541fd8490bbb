"""BIDS: JSON sidecars (echo times, field strength), file names, dataset descriptions.

Also atomic text/JSON writes (temporary file + rename) for every small file
that batch processing and DICOM conversion produce.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..acquisition import check_field_strength
from ..errors import QSMInputError, QSMWarning
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
    """Parsed sidecar of ``image_path``, or an empty dict when there is none.

    The file may be UTF-8, UTF-16 or UTF-32 (with or without a byte-order
    mark). It must hold a JSON object, and the entries QSMLib uses
    (``EchoTime``, ``MagneticFieldStrength``, ``ImagingFrequency``) must be
    numbers (``EchoTime`` may be a list of numbers); anything else is
    refused with :class:`QSMInputError` naming the file and the entry.
    """
    path = sidecar_path(Path(image_path))
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32
    except (OSError, ValueError) as error:  # ValueError: JSON syntax or text encoding
        raise QSMInputError(f"Cannot read the JSON sidecar {path}: {error}. Fix or remove it.") from None
    if not isinstance(sidecar, dict):
        raise QSMInputError(f"The JSON sidecar {path} holds a JSON {_json_type(sidecar)}, not an object "
                            '(e.g. {"EchoTime": 0.004, "MagneticFieldStrength": 3}): fix or remove it.')
    for key, (unit, example, lists) in _SIDECAR_NUMBERS.items():
        if key in sidecar and sidecar[key] is not None:
            value = sidecar[key]
            values = value if lists and isinstance(value, list) else [value]
            if not values or not all(_is_finite_number(v) for v in values):
                kind = "a number or a list of numbers" if lists else "a number"
                raise QSMInputError(f"{key} in the JSON sidecar {path} must be {kind} in {unit} (e.g. {example}), "
                                    f"got {json.dumps(value)}: fix the sidecar.")
    return sidecar


#: Sidecar entries QSMLib reads: key -> (unit, example, whether a list of values is allowed).
_SIDECAR_NUMBERS = {
    "EchoTime": ("seconds", "0.004", True),
    "MagneticFieldStrength": ("tesla", "3", False),
    "ImagingFrequency": ("MHz", "123.25", False),
}
#: Largest relative disagreement between ImagingFrequency and MagneticFieldStrength that passes silently.
FIELD_STRENGTH_TOLERANCE = 0.05


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def echo_times_from_sidecars(sidecars: list[dict[str, Any]]) -> Optional[list[float]]:
    """Echo times (s) from ``EchoTime`` entries: one per file, or a list in one file.

    None when any sidecar lacks ``EchoTime``. The values are not checked
    here; :func:`QSMLib.acquisition.check_echo_times` does that for every
    way echo times come in.
    """
    times: list[float] = []
    for sidecar in sidecars:
        value = sidecar.get("EchoTime")
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if not all(_is_finite_number(t) for t in values):
            raise QSMInputError(f"EchoTime in a JSON sidecar must be a number in seconds, got {value!r}.")
        times.extend(float(t) for t in values)
    return times or None


def field_strength_from_sidecars(sidecars: list[dict[str, Any]]) -> tuple[Optional[float], str]:
    """Field strength (T) and where it came from.

    ``ImagingFrequency`` (MHz) wins over ``MagneticFieldStrength``: scanners
    labelled 3 T often run at 2.89 T. Both are checked with
    :func:`QSMLib.acquisition.check_field_strength`.

    Warns
    -----
    QSMWarning
        When the two disagree by more than :data:`FIELD_STRENGTH_TOLERANCE`
        (e.g. a 7 T imaging frequency with ``MagneticFieldStrength`` 3): one
        of them is wrong, and the imaging frequency is used.
    """
    def first(key: str) -> Optional[float]:
        for sidecar in sidecars:
            value = sidecar.get(key)
            if value is not None:
                if not _is_finite_number(value):
                    raise QSMInputError(f"{key} in a JSON sidecar must be a number, got {value!r}.")
                return float(value)
        return None

    frequency_mhz, labelled_t = first("ImagingFrequency"), first("MagneticFieldStrength")
    if labelled_t is not None:
        check_field_strength(labelled_t, source="MagneticFieldStrength in the JSON sidecar")
    if frequency_mhz is None:
        return labelled_t, "MagneticFieldStrength" if labelled_t is not None else "none"
    b0_tesla = check_field_strength(b0_from_imaging_frequency(frequency_mhz),
                                    source=f"ImagingFrequency {frequency_mhz:g} MHz in the JSON sidecar")
    if labelled_t is not None and abs(b0_tesla - labelled_t) > FIELD_STRENGTH_TOLERANCE * labelled_t:
        warnings.warn(
            f"The JSON sidecars disagree on the field strength: ImagingFrequency {frequency_mhz:g} MHz means "
            f"{b0_tesla:.3g} T, but MagneticFieldStrength says {labelled_t:g} T. Using {b0_tesla:.3g} T from the "
            "imaging frequency; if that is wrong, give the field strength with --b0.", QSMWarning, stacklevel=2)
    return b0_tesla, "ImagingFrequency"


#: The BIDS echo entity anywhere in a file name (``..._echo-2_...``), also in non-BIDS names.
_ECHO_ENTITY = re.compile(r"(?:^|_)echo-(\d+)(?=[_.])")


def echo_number(path: Path) -> Optional[int]:
    """The number of an ``echo-<n>`` entity in the file name (BIDS or not), or None.

    Examples
    --------
    >>> echo_number(Path("sub-01_echo-10_part-mag_MEGRE.nii.gz")), echo_number(Path("mag_echo-2.nii"))
    (10, 2)
    """
    match = _ECHO_ENTITY.search(Path(path).name)
    return int(match.group(1)) if match else None


def sidecar_echo_time(path: Path) -> Optional[float]:
    """The single ``EchoTime`` (s) of a file's sidecar, or None (no sidecar, no entry, or a list)."""
    value = read_sidecar(Path(path)).get("EchoTime")
    return float(value) if _is_finite_number(value) else None


def order_echo_files(paths: Sequence[Union[str, Path]], role: str) -> list[Path]:
    """Files of one echo each, put in echo order.

    The order comes from each file's sidecar ``EchoTime``, else from the
    ``echo-<n>`` entity of its name; files given in another order (as shell
    globbing gives ``echo-1, echo-10, echo-2``) are reordered, with a
    warning. Without either, the given order is kept, unless the names
    differ only in one number that runs in another order (``e1, e10, e2``).

    Parameters
    ----------
    paths : sequence of path
        The files, as given.
    role : str
        ``"magnitude"`` or ``"phase"``, for messages.

    Returns
    -------
    list of Path

    Raises
    ------
    QSMInputError
        When the order is ambiguous: two files with the same echo time or
        number, sidecars and names that order the echoes differently, or
        numbered names given out of order with nothing to confirm that the
        numbers are echoes.

    Warns
    -----
    QSMWarning
        When the files are reordered.
    """
    files = [Path(p) for p in paths]
    if len(files) < 2:
        return files
    times = [sidecar_echo_time(f) for f in files]
    numbers = [echo_number(f) for f in files]
    names = ", ".join(f.name for f in files)
    orders = {}
    for label, keys in (("EchoTime in their sidecars", times), ("echo-<n> in their names", numbers)):
        if any(k is None for k in keys):
            continue
        if len(set(keys)) < len(keys):
            raise QSMInputError(f"Two {role} files have the same {label.split(' in ')[0]} ({names}): each file must "
                                "be a different echo. Check for a file given twice.")
        orders[label] = sorted(range(len(files)), key=keys.__getitem__)
    if len(orders) == 2 and len(set(map(tuple, orders.values()))) == 2:
        raise QSMInputError(f"The {role} files ({names}) are in one echo order by the EchoTime in their sidecars "
                            "and in another by the echo-<n> in their names: fix the sidecars or the names.")
    if not orders:
        _refuse_numbered_out_of_order(files, role)
        return files
    label, order = next(iter(orders.items()))
    if order != list(range(len(files))):
        files = [files[i] for i in order]
        warnings.warn(f"The {role} files were not given in echo order; they are used in the order of the {label}: "
                      f"{', '.join(f.name for f in files)}.", QSMWarning, stacklevel=2)
    return files


def check_echo_pairs(magnitude: Sequence[Path], phase: Sequence[Path]) -> None:
    """Refuse magnitude and phase files (in echo order) that are not the same echoes.

    Compared where both sides say: the ``echo-<n>`` entities of the names
    and the sidecars' ``EchoTime`` (to 1 %).
    """
    if len(magnitude) != len(phase) or len(magnitude) < 2:
        return
    for label, key, same in (
        ("echo numbers (echo-<n>)", echo_number, lambda a, b: a == b),
        ("echo times (sidecar EchoTime, s)", sidecar_echo_time, lambda a, b: math.isclose(a, b, rel_tol=0.01)),
    ):
        magnitude_keys, phase_keys = [key(f) for f in magnitude], [key(f) for f in phase]
        if None in magnitude_keys or None in phase_keys:
            continue
        if not all(same(a, b) for a, b in zip(magnitude_keys, phase_keys)):
            raise QSMInputError(f"The magnitude and phase files are not the same echoes: {label} "
                                f"{magnitude_keys} for magnitude, {phase_keys} for phase. Give matching files.")


def _refuse_numbered_out_of_order(files: list[Path], role: str) -> None:
    """Refuse names that differ only in one number given out of numeric order (``e1, e10, e2``)."""
    pieces = [re.split(r"(\d+)", f.name) for f in files]
    if len({len(p) for p in pieces}) != 1:
        return
    varying = [i for i in range(1, len(pieces[0]), 2) if len({p[i] for p in pieces}) > 1]
    fixed_text = all(len({p[i] for p in pieces}) == 1 for i in range(0, len(pieces[0]), 2))
    if len(varying) != 1 or not fixed_text:
        return
    numbers = [int(p[varying[0]]) for p in pieces]
    if numbers != sorted(numbers):
        raise QSMInputError(
            f"The {role} files are numbered {', '.join(map(str, numbers))} in their names but were given in that "
            f"order ({', '.join(f.name for f in files)}), which is not echo order if the numbers count echoes. Give "
            "them in echo order (e.g. sorted with `ls -v`), or add BIDS sidecars with EchoTime."
        )


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
