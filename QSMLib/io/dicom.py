"""Multi-echo GRE DICOM -> BIDS magnitude and phase (``*_echo-N_part-{mag,phase}_MEGRE.nii.gz``).

pydicom reads the headers and pixels, numpy stacks them, and the volumes are
written with QSMLib's NIfTI writer, so the conversion needs no external
binary (dcm2niix would, and its PyPI wheel is a binary per platform).

What is handled
---------------
- Classic DICOM, one slice per file, any folder layout: files are grouped into
  acquisitions by study, frame of reference, protocol, orientation, matrix and
  pixel spacing, so Siemens' separate magnitude and phase series pair up.
  Echoes are told apart by EchoTime, parts by ImageType (``M``/``P``/``R``/``I``,
  ``MAGNITUDE``/``PHASE``/``REAL``/``IMAGINARY``) or GE's private image type
  (0043,102F).
- Phase scaling from the header, not from the data's range: values after
  RescaleSlope/Intercept within [-pi, pi] are radians; integers are mapped
  from their stored range, ``(v - intercept) * 2 pi / (slope * 2^BitsStored) - pi``
  (Siemens: 12 bits, slope 2, intercept -4096 -> ``v * pi / 4096``). The rule
  used is written into every phase sidecar (``PhaseScaling``).
- Real/imaginary pairs (GE, Philips) become magnitude and phase. A phase
  that alternates by pi from slice to slice (the slice "chopping" of some GE
  reconstructions) is detected and corrected, and the correction noted.
- GE phase may be left-handed: the conversion says so, and the user passes
  ``--phase-sign -1`` (QSMLib never guesses the phase sign).

Not handled (reported with the reason): enhanced multi-frame DICOM, compressed
pixel data that pydicom cannot decode, gantry tilt, missing slices.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._version import __version__
from .._wrapping import complex_product
from ..errors import QSMInputError
from .bids import bids_name, dataset_description, write_json_atomic, write_text_atomic
from .nifti import write_volume

MISSING_PYDICOM = (
    "DICOM conversion needs pydicom, which is not installed. Install the optional dependencies with "
    '`pip install "qsmlib[cohort]"` and run the command again.'
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: GE private "image type" (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary.
_GE_IMAGE_TYPE = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_IMAGE_TYPE_TOKENS = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase", "R": "real", "REAL": "real",
                      "I": "imag", "IMAGINARY": "imag"}


@dataclass
class DicomConversion:
    """What :func:`dicom_to_bids` wrote and what it could not.

    Attributes
    ----------
    runs : list of dict
        One per converted acquisition: ``name`` (BIDS prefix), ``files``,
        ``n_echoes``, ``echo_times_s``, ``manufacturer``, ``phase_scaling``, ``notes``.
    skipped : list of dict
        Series that are not multi-echo GRE magnitude/phase data (``series``, ``reason``).
    failed : list of dict
        Multi-echo GRE data that could not be converted (``series``, ``reason``).
    """

    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Slice:
    path: Path
    header: Any
    part: str
    echo_time_ms: float


def dicom_to_bids(
    dicom_dir: Union[str, Path],
    bids_dir: Union[str, Path],
    *,
    subject: Optional[str] = None,
    session: Optional[str] = None,
    overwrite: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> DicomConversion:
    """Convert the multi-echo GRE series of a DICOM folder into a BIDS dataset.

    Parameters
    ----------
    dicom_dir : path
        Searched recursively; files that are not DICOM are ignored.
    bids_dir : path
        BIDS dataset root; ``sub-X/[ses-Y/]anat/`` files are added (and a
        ``dataset_description.json`` when there is none).
    subject : str, optional
        Subject label; default the PatientID with only letters and digits.
    session : str, optional
        Session label; default none.
    overwrite : bool
        Replace files that exist; otherwise an acquisition whose files exist fails.
    progress, cancel
        Progress callback (fraction, message) and cancel token.

    Returns
    -------
    DicomConversion
    """
    try:
        import pydicom
    except ImportError:
        raise QSMInputError(MISSING_PYDICOM) from None
    source = Path(dicom_dir)
    if not source.is_dir():
        raise QSMInputError(f"The DICOM folder {source} does not exist.")
    for label, what in ((subject, "subject"), (session, "session")):
        if label is not None and not label.isalnum():
            raise QSMInputError(f"The {what} label {label!r} must hold only letters and digits (BIDS).")
    conversion = DicomConversion()
    paths = sorted(p for p in source.rglob("*") if p.is_file())
    slices: list[_Slice] = []
    for index, path in enumerate(paths):
        check_cancel(cancel)
        report(progress, 0.3 * index / max(len(paths), 1), f"reading headers: {index + 1}/{len(paths)}")
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue
        found = _classify(path, header)
        if isinstance(found, _Slice):
            slices.append(found)
        elif found is not None:
            conversion.skipped.append({"series": _series_label(header), "reason": found})
    conversion.skipped = list({(s["series"], s["reason"]): s for s in conversion.skipped}.values())
    if not slices:
        return conversion

    groups: dict[tuple, list[_Slice]] = {}
    for item in slices:
        groups.setdefault(_acquisition_key(item.header), []).append(item)
    patients = sorted({key[0] for key in groups})
    if subject is not None and len(patients) > 1:
        raise QSMInputError(f"{source} holds {len(patients)} patients ({', '.join(patients)}) but one --subject "
                            "label was given: convert one patient's folder at a time, or leave out --subject.")
    ordered = []
    for key, members in sorted(groups.items(),
                               key=lambda item: min(int(s.header.get("SeriesNumber", 0) or 0) for s in item[1])):
        parts = {s.part for s in members}
        if "phase" in parts or {"real", "imag"} <= parts:
            ordered.append((key, members))
        else:
            conversion.skipped.append({"series": ", ".join(sorted({_series_label(s.header) for s in members})),
                                       "reason": "no phase (or real and imaginary) images."})
    runs_per_subject: dict[str, int] = {}
    for key, _ in ordered:
        runs_per_subject[key[0]] = runs_per_subject.get(key[0], 0) + 1
    run_numbers: dict[str, int] = {}
    root = Path(bids_dir)
    for done, (key, members) in enumerate(ordered):
        check_cancel(cancel)
        report(progress, 0.3 + 0.7 * done / len(ordered), f"converting {done + 1}/{len(ordered)}")
        label = subject or re.sub(r"[^A-Za-z0-9]", "", key[0])
        series = ", ".join(sorted({_series_label(s.header) for s in members}))
        if not label:
            conversion.failed.append({"series": series, "reason": "no PatientID to name the subject: give --subject."})
            continue
        entities = {"sub": label, **({"ses": session} if session else {})}
        if runs_per_subject[key[0]] > 1:
            run_numbers[key[0]] = run_numbers.get(key[0], 0) + 1
            entities["run"] = str(run_numbers[key[0]])
        try:
            conversion.runs.append(_convert(members, root, entities, overwrite, pydicom))
        except QSMInputError as error:
            conversion.failed.append({"series": series, "reason": str(error)})
    if conversion.runs and not (root / "dataset_description.json").is_file():
        write_json_atomic(root / "dataset_description.json", dataset_description("Converted by qsm dicom2bids", "raw"))
    report(progress, 1.0, "done")
    return conversion


def _series_label(header: Any) -> str:
    return f"series {header.get('SeriesNumber', '?')} {header.get('SeriesDescription', '')}".strip()


def _classify(path: Path, header: Any) -> Union[_Slice, str, None]:
    """A slice of a candidate GRE series, a reason why the file is not one, or None (not an image)."""
    if "PixelData" not in header and "Rows" not in header:
        return None
    if header.get("Modality") != "MR":
        return f"modality {header.get('Modality')} is not MR."
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return "enhanced (multi-frame) DICOM is not supported: convert it with dcm2niix to BIDS first."
    if header.get("EchoTime") in (None, ""):
        return "no EchoTime."
    for required in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if header.get(required) in (None, ""):
            return f"no {required}: the geometry is unknown."
    return _Slice(path, header, _part(header), float(header.EchoTime))


def _part(header: Any) -> str:
    """mag, phase, real or imag, from GE's private image type or the ImageType tokens."""
    private = header.get((0x0043, 0x102F))
    if private is not None:
        value = private.value
        # Without GE's private dictionary the element may be read as raw little-endian bytes (VR UN).
        number = int.from_bytes(value[:2], "little", signed=True) if isinstance(value, bytes) else value
        # An unknown or unreadable private value falls back to the standard ImageType tokens.
        known = isinstance(number, (int, float)) and int(number) in _GE_IMAGE_TYPE
        if known:
            return _GE_IMAGE_TYPE[int(number)]
    tokens = [str(t).upper() for t in (header.get("ImageType") or [])][2:]
    for token in tokens:
        if token in _IMAGE_TYPE_TOKENS:
            return _IMAGE_TYPE_TOKENS[token]
    return "mag"


def _acquisition_key(header: Any) -> tuple:
    """Slices with the same key belong to one acquisition (magnitude and phase series pair up)."""
    return (
        str(header.get("PatientID", "")), str(header.get("StudyInstanceUID", "")),
        str(header.get("FrameOfReferenceUID", "")), str(header.get("ProtocolName", "")),
        tuple(round(float(v), 4) for v in header.ImageOrientationPatient), int(header.Rows), int(header.Columns),
        tuple(round(float(v), 4) for v in header.PixelSpacing),
    )


def _convert(members: Sequence[_Slice], root: Path, entities: dict[str, str], overwrite: bool,
             pydicom: Any) -> dict[str, Any]:
    """Stack, scale and write one acquisition; raises QSMInputError with the reason when it cannot."""
    first = members[0].header
    echo_times = sorted({round(s.echo_time_ms, 4) for s in members})
    stacks: dict[str, list[np.ndarray]] = {}
    headers: dict[str, list[Any]] = {}
    affine = None
    for part in sorted({s.part for s in members}):
        for echo_time in echo_times:
            chosen = [s for s in members if s.part == part and round(s.echo_time_ms, 4) == echo_time]
            if not chosen:
                raise QSMInputError(f"echo {echo_time:g} ms has no {part} images: the series is incomplete.")
            volume, volume_affine = _stack(chosen, pydicom)
            if affine is not None and not np.allclose(volume_affine, affine, atol=1e-3):
                raise QSMInputError(f"the {part} images at {echo_time:g} ms cover other slices than the rest.")
            affine = volume_affine
            stacks.setdefault(part, []).append(volume)
            headers.setdefault(part, []).append(chosen[0].header)
    notes: list[str] = []
    manufacturer = str(first.get("Manufacturer", "unknown"))
    if "phase" in stacks:
        phase, scaling = zip(*(_phase_to_radians(v, h) for v, h in zip(stacks["phase"], headers["phase"])))
        phase_echoes, phase_scaling = list(phase), scaling[0]
    else:
        signal = np.stack(stacks["real"]) + 1j * np.stack(stacks["imag"])
        signal, chopped = correct_slice_chopping(signal)
        if chopped:
            notes.append("the phase alternated by pi from slice to slice (GE slice chopping): every other "
                         "slice was negated.")
        phase_echoes = list(np.angle(signal).astype(np.float32))
        phase_scaling = "angle(real + i imaginary), radians"
        stacks.setdefault("mag", list(np.abs(signal).astype(np.float32)))
    if "GE" in manufacturer.upper():
        notes.append("GE phase may be left-handed: if deep grey matter comes out diamagnetic (dark), "
                     "process with --phase-sign -1.")
    if "mag" not in stacks:
        raise QSMInputError("phase images without magnitude images: export the magnitude series too.")

    folder = root / f"sub-{entities['sub']}" / (f"ses-{entities['ses']}" if "ses" in entities else "") / "anat"
    targets = [folder / bids_name({**entities, "echo": str(n + 1), "part": part}, "MEGRE", ".nii.gz")
               for n in range(len(echo_times)) for part in ("mag", "phase")]
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise QSMInputError(f"{folder} already holds {', '.join(existing[:2])}...: pass --overwrite to replace.")
    folder.mkdir(parents=True, exist_ok=True)
    common = _sidecar_fields(first)
    files = []
    for n, echo_time in enumerate(echo_times):
        for part, volume in (("mag", stacks["mag"][n]), ("phase", phase_echoes[n])):
            path = folder / bids_name({**entities, "echo": str(n + 1), "part": part}, "MEGRE", ".nii.gz")
            source = headers[part][n] if part in headers else headers["real"][n]
            sidecar = {**common, "EchoTime": echo_time / 1000.0, "EchoNumber": n + 1,
                       "ImageType": [str(t) for t in source.get("ImageType") or []]}
            if part == "phase":
                sidecar.update(Units="rad", PhaseScaling=phase_scaling)
            write_volume(path, np.asarray(volume, dtype=np.float32), affine)
            write_text_atomic(path.with_name(path.name[:-7] + ".json"), json.dumps(sidecar, indent=2) + "\n")
            files.append(str(path))
    return {"name": "_".join(f"{k}-{v}" for k, v in entities.items()), "files": files, "n_echoes": len(echo_times),
            "echo_times_s": [t / 1000.0 for t in echo_times], "manufacturer": manufacturer,
            "phase_scaling": phase_scaling, "notes": notes}


def _stack(slices: Sequence[_Slice], pydicom: Any) -> tuple[np.ndarray, np.ndarray]:
    """(slice, row, column) float64 volume after rescaling, and its array-index -> RAS affine."""
    header = slices[0].header
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    positions = np.array([[float(v) for v in s.header.ImagePositionPatient] for s in slices])
    order = np.argsort(positions @ normal)
    positions = positions[order]
    if len(slices) < 2:
        raise QSMInputError("only one slice: QSM needs a 3D volume.")
    steps = np.diff(positions @ normal)
    if np.any(steps < 1e-3):
        raise QSMInputError("two images at the same slice position: the folder holds two acquisitions with the "
                            "same geometry; put each in its own folder and convert them one at a time.")
    if np.ptp(steps) > 0.01 * np.mean(steps):
        raise QSMInputError(f"uneven slice spacing ({steps.min():.3f}-{steps.max():.3f} mm): slices are missing.")
    slice_step = (positions[-1] - positions[0]) / (len(slices) - 1)
    if abs(slice_step @ normal) < 0.999 * np.linalg.norm(slice_step):
        raise QSMInputError("the slices are sheared (gantry tilt), which is not supported.")
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = slice_step
    lps[:3, 1] = column_direction * row_spacing
    lps[:3, 2] = row_direction * column_spacing
    lps[:3, 3] = positions[0]
    volume = []
    for index in order:
        try:
            dataset = pydicom.dcmread(slices[index].path)
            pixels = dataset.pixel_array.astype(np.float64)
        except Exception as error:  # noqa: BLE001 - pydicom raises many types for undecodable pixel data
            raise QSMInputError(f"cannot decode the pixels of {slices[index].path.name} ({error}).") from None
        volume.append(pixels * float(dataset.get("RescaleSlope", 1) or 1) + float(dataset.get("RescaleIntercept", 0)
                                                                                  or 0))
    return np.stack(volume), _LPS_TO_RAS @ lps


def _phase_to_radians(values: np.ndarray, header: Any) -> tuple[np.ndarray, str]:
    """Radians in [-pi, pi) from rescaled phase values, using the header's stored range; and the rule used."""
    low, high = float(values.min()), float(values.max())
    if low >= -np.pi * 1.001 and high <= np.pi * 1.001 and np.any(values != np.round(values)):
        return np.asarray(values, dtype=np.float32), "radians as stored"
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    bits = int(header.get("BitsStored", 12) or 12)
    if int(header.get("PixelRepresentation", 0) or 0) == 1:
        intercept -= slope * 2 ** (bits - 1)  # signed storage: the stored range starts at -2^(bits-1)
    period = slope * 2**bits
    if low < intercept - 1e-6 or high > intercept + period:
        raise QSMInputError(f"phase values {low:g}..{high:g} lie outside the stored range {intercept:g}.."
                            f"{intercept + period:g}: the scaling is unknown. Convert with dcm2niix and give "
                            "qsm run --phase-scale.")
    radians = (values - intercept) * (2.0 * np.pi / period) - np.pi
    radians = np.mod(radians + np.pi, 2.0 * np.pi) - np.pi
    return radians.astype(np.float32), f"(value - ({intercept:g})) * 2 pi / {period:g} - pi ({bits}-bit range)"


def correct_slice_chopping(signal: np.ndarray) -> tuple[np.ndarray, bool]:
    """Undo a phase that alternates by pi between adjacent slices (axis 1).

    Parameters
    ----------
    signal : numpy.ndarray of complex, shape (echo, slice, row, column)

    Returns
    -------
    signal : numpy.ndarray
        With every other slice negated when chopping was found, else unchanged.
    chopped : bool
        True when most adjacent slice pairs are anti-correlated (a smooth
        field makes neighbouring slices' signals nearly in phase).
    """
    products = np.sum(complex_product(signal[:, 1:], np.conj(signal[:, :-1])), axis=(0, 2, 3))
    informative = np.abs(products) > 1e-6 * np.abs(products).max() if products.size else products
    if not np.any(informative):
        return signal, False
    chopped = bool(np.mean(products.real[informative] < 0) > 0.8)
    if chopped:
        signal = signal.copy()
        signal[:, 1::2] *= -1
    return signal, chopped


def _sidecar_fields(header: Any) -> dict[str, Any]:
    """BIDS sidecar entries shared by every echo and part of one acquisition."""
    fields: dict[str, Any] = {}
    for name, key, scale in (("MagneticFieldStrength", "MagneticFieldStrength", 1.0),
                             ("ImagingFrequency", "ImagingFrequency", 1.0),
                             ("RepetitionTime", "RepetitionTime", 0.001), ("FlipAngle", "FlipAngle", 1.0),
                             ("SliceThickness", "SliceThickness", 1.0)):
        value = header.get(key)
        if value not in (None, ""):
            fields[name] = float(value) * scale
    for key in ("Manufacturer", "ManufacturersModelName", "SeriesDescription", "ProtocolName"):
        if header.get(key):
            fields[key] = str(header.get(key))
    if header.get("SeriesNumber") is not None:
        fields["SeriesNumber"] = int(header.SeriesNumber)
    fields["ImageOrientationPatientDICOM"] = [float(v) for v in header.ImageOrientationPatient]
    fields["ConversionSoftware"] = "QSMLib qsm dicom2bids"
    fields["ConversionSoftwareVersion"] = __version__
    return fields
