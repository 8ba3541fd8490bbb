"""One acquisition from files to files: the path shared by ``qsm run``, ``qsm bids`` and the Slicer engine.

Reading (NIfTI + BIDS sidecars -> :class:`RunInputs`), reconstructing
(:func:`reconstruct`, the pipeline), and choosing and writing the outputs
(:func:`output_maps`, :func:`write_run`) are separate steps, so that a
caller can check the output folder after reading and before the work, and
a cohort task can publish the files its own way.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._progress import CancelToken, ProgressCallback
from ._threads import thread_count
from .acquisition import (
    MultiEchoGRE,
    b0_direction_from_affine,
    check_echo_times,
    check_field_strength,
    voxel_size_from_affine,
)
from .errors import QSMInputError, QSMWarning
from .io.bids import (
    check_echo_pairs,
    echo_times_from_sidecars,
    field_strength_from_sidecars,
    order_echo_files,
    read_sidecar,
)
from .io.files import file_checksum
from .io.nifti import load_acquisition, read_map_like, read_volume
from .io.results import MAP_FILES, RELAXOMETRY_OUTPUTS, map_file_name, planned_files, write_outputs
from .masking import validate_user_mask
from .pipeline import PipelineConfig, QSMResult, StageConfig, run_pipeline, run_pipeline_from_field
from .report import atlas_qc, write_png
from .roi import read_label_names
from .rois import AtlasROIs, atlas_rois, check_atlas_available, structure_statistics
from .rois.registration import combined_magnitude
from .units import GAMMA_BAR_HZ_PER_T, hz_to_ppm

PathLike = Union[str, Path]
#: Where automatic ROIs can come from (``--rois``).
ROI_SOURCES = ("atlas",)
#: Files of automatic ROIs besides their label map (``rois.nii.gz``): its names (index, name) and the QC figure.
ATLAS_FILES = {"rois_table": "rois.tsv", "rois_qc": "rois_qc.png"}

#: Output name -> key of ``QSMResult.maps`` for the maps that stages produce.
STAGE_MAP_OUTPUTS = {
    "fit_residual": "fit_residual_rad", "field_weight": "field_weight", "romeo_quality": "romeo_quality",
    "phase_offset": "phase_offset_rad", "r2star": "r2star", "t2star": "t2star",
}


@dataclass
class RunInputs:
    """Everything read for one run, before any work.

    Attributes
    ----------
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm of the input grid; every output gets it.
    shape : tuple of int
        Spatial shape (n0, n1, n2).
    acquisition : MultiEchoGRE or None
        Magnitude and phase (None when starting from a field map).
    field_hz, field_kind : numpy.ndarray or None, str
        A total or local field map in Hz instead of an acquisition
        (``field_kind`` ``"total"`` or ``"local"``).
    voxel_size_mm, b0_direction, b0_tesla
        Geometry and field strength used.
    mask : numpy.ndarray of bool or None
        The user's brain mask.
    labels, label_names
        Label map (int32, 0 = background) and names for ROI statistics.
    provenance : dict
        What was read (files and their SHA-256, echo times, field strength,
        phase scaling) for ``provenance.json``.
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    voxel_size_mm: tuple[float, ...]
    b0_direction: tuple[float, ...]
    b0_tesla: float
    acquisition: Optional[MultiEchoGRE] = None
    field_hz: Optional[np.ndarray] = None
    field_kind: str = ""
    mask: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    label_names: Optional[dict[int, str]] = None
    provenance: dict[str, Any] = field(default_factory=dict)


def read_acquisition(
    magnitude: Sequence[PathLike],
    phase: Sequence[PathLike],
    *,
    echo_times_s: Optional[Sequence[float]] = None,
    b0_tesla: Optional[float] = None,
    b0_direction: Optional[Sequence[float]] = None,
    phase_scale: str = "auto",
    phase_sign: int = 1,
    bipolar: Optional[bool] = None,
    mask: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    label_names: Optional[PathLike] = None,
) -> RunInputs:
    """Read a multi-echo GRE acquisition, and optionally a mask and a label map, from files.

    Parameters
    ----------
    magnitude, phase : sequence of path
        One 4D file each, or one 3D file per echo (in echo order).
    echo_times_s, b0_tesla : optional
        Override the BIDS sidecars (``EchoTime``; ``ImagingFrequency`` or
        ``MagneticFieldStrength``).
    b0_direction : sequence of 3 float, optional
        B0 in array-axis coordinates; default: from the affine.
    phase_scale, phase_sign, bipolar
        See :func:`QSMLib.io.nifti.load_acquisition`; ``bipolar`` None (not
        known) lets the pipeline tell from the echoes.
    mask, labels, label_names : path, optional
        Brain mask and label map on the image grid, and the labels' names
        (TSV ``index, name`` or JSON; default: a ``.tsv`` next to the labels).

    Returns
    -------
    RunInputs
    """
    magnitude, phase = order_echo_files(magnitude, "magnitude"), order_echo_files(phase, "phase")
    check_echo_pairs(magnitude, phase)
    sidecar_times = (echo_times_from_sidecars([read_sidecar(p) for p in phase])
                     or echo_times_from_sidecars([read_sidecar(p) for p in magnitude]))
    if echo_times_s is not None:
        echo_times_s = list(check_echo_times(echo_times_s, source="--te"))
        if sidecar_times is not None and len(sidecar_times) == len(echo_times_s) and not np.allclose(
                sidecar_times, echo_times_s, rtol=0.01, atol=1e-6):
            warnings.warn(
                f"--te gives echo times {_ms(echo_times_s)} ms but the JSON sidecars say {_ms(sidecar_times)} ms: "
                "using --te. Check which is right.", QSMWarning, stacklevel=2)
    elif sidecar_times is not None:
        check_echo_times(sidecar_times, source="EchoTime in the JSON sidecars")
    if b0_tesla is not None:
        b0_tesla = check_field_strength(b0_tesla, source="--b0")
    acquisition, info = load_acquisition(
        list(magnitude), list(phase), echo_times_s=echo_times_s, b0_tesla=b0_tesla, phase_scale=phase_scale,
        phase_sign=phase_sign, bipolar=bipolar, b0_direction=b0_direction,
    )
    shape = acquisition.spatial_shape
    inputs = RunInputs(
        affine=acquisition.affine, shape=shape, voxel_size_mm=tuple(acquisition.voxel_size_mm),
        b0_direction=tuple(acquisition.b0_direction), b0_tesla=acquisition.b0_tesla, acquisition=acquisition,
        mask=_read_mask(mask, acquisition.affine, shape),
    )
    inputs.labels, inputs.label_names = read_labels(labels, label_names, acquisition.affine, shape)
    # The images were hashed as they were read; mask and labels are small.
    image_checksums = info.pop("checksums")
    inputs.provenance = {
        **info, "echo_times_s": list(acquisition.echo_times_s), "b0_tesla": acquisition.b0_tesla,
        "b0_direction": list(acquisition.b0_direction), "voxel_size_mm": list(acquisition.voxel_size_mm),
        "files": {**image_checksums, **checksums([mask, labels])},
    }
    return inputs


def read_field(
    field_map: PathLike,
    *,
    field_kind: str,
    mask: Optional[PathLike],
    b0_tesla: Optional[float] = None,
    b0_direction: Optional[Sequence[float]] = None,
    labels: Optional[PathLike] = None,
    label_names: Optional[PathLike] = None,
) -> RunInputs:
    """Read a total or local field map in Hz (the stages QSM-CI benchmarks start from) and its mask.

    Parameters
    ----------
    field_map : path
        3D field map in Hz.
    field_kind : {"total", "local"}
        Whether background removal still has to run.
    mask : path
        Brain mask (required: there is no magnitude to derive one from).
    b0_tesla : float, optional
        Field strength; default: the field map's BIDS sidecar.
    b0_direction, labels, label_names
        As :func:`read_acquisition`.

    Returns
    -------
    RunInputs
    """
    if field_kind not in ("total", "local"):
        raise QSMInputError(f"field_kind must be 'total' or 'local', got {field_kind!r}.")
    if not mask:
        raise QSMInputError("Starting from a field map needs --mask (there is no magnitude to derive one from).")
    field_hz, affine = read_volume(field_map)
    if field_hz.ndim != 3:
        raise QSMInputError(f"{field_map} must be a 3D field map in Hz, got shape {field_hz.shape}.")
    if b0_tesla is None:
        b0_tesla, _ = field_strength_from_sidecars([read_sidecar(Path(field_map))])
        if b0_tesla is None:
            raise QSMInputError("No field strength for the field map: give --b0 in tesla.")
    else:
        b0_tesla = check_field_strength(b0_tesla, source="--b0")
    shape = tuple(field_hz.shape)
    direction = tuple(b0_direction) if b0_direction is not None else tuple(b0_direction_from_affine(affine))
    inputs = RunInputs(
        affine=affine, shape=shape, voxel_size_mm=tuple(voxel_size_from_affine(affine)), b0_direction=direction,
        b0_tesla=float(b0_tesla), field_hz=field_hz, field_kind=field_kind, mask=_read_mask(mask, affine, shape),
    )
    _warn_implausible_field(field_hz, inputs.mask, inputs.b0_tesla, field_kind, field_map)
    inputs.labels, inputs.label_names = read_labels(labels, label_names, affine, shape)
    inputs.provenance = {"field_kind": field_kind, "b0_tesla": float(b0_tesla), "b0_direction": list(direction),
                         "files": checksums([field_map, mask, labels])}
    return inputs


#: Range (ppm of B0) of the 99th percentile of |field| in the mask that a field map in Hz can have, per kind.
#: Measured: total fields 0.53 ppm (phantom) and 0.61 ppm (toy head); the phantom's local field 0.044 ppm;
#: in vivo total fields near the sinuses reach a few ppm. The same maps in ppm read as Hz are 128 times
#: smaller at 3 T (total 0.004-0.02, local 0.0004), maps scaled by 1e6 far larger.
PLAUSIBLE_FIELD_PPM = {"total": (0.03, 50.0), "local": (0.005, 10.0)}


def _warn_implausible_field(field_hz: np.ndarray, mask: np.ndarray, b0_tesla: float, kind: str,
                            path: PathLike) -> None:
    """Warn when a field map's spread is implausible for Hz at ``b0_tesla`` (ppm, radians or scaled maps)."""
    inside = field_hz[mask & np.isfinite(field_hz)]
    if inside.size == 0:
        return
    spread_hz = float(np.percentile(np.abs(inside), 99))
    spread_ppm = float(hz_to_ppm(spread_hz, b0_tesla))
    low, high = PLAUSIBLE_FIELD_PPM[kind]
    hz_per_ppm = GAMMA_BAR_HZ_PER_T * b0_tesla * 1e-6
    if spread_ppm < low:
        warnings.warn(
            f"The {kind} field map {path} is implausibly small for Hz: 99 % of |field| in the mask is below "
            f"{spread_hz:.3g}, which as Hz is {spread_ppm:.2g} ppm at {b0_tesla:g} T. Is it in ppm (multiply by "
            f"{hz_per_ppm:.4g} Hz/ppm) or in radians (divide by 2 pi TE)? Convert it to Hz, or the susceptibility "
            "will be too small.", QSMWarning, stacklevel=3)
    elif spread_ppm > high:
        warnings.warn(
            f"The {kind} field map {path} is implausibly large for Hz: 99 % of |field| in the mask reaches "
            f"{spread_hz:.3g}, which as Hz is {spread_ppm:.3g} ppm at {b0_tesla:g} T. Is it scaled (e.g. by 1e6) or "
            "in another unit? Convert it to Hz, or the susceptibility will be too large.", QSMWarning, stacklevel=3)


def read_labels(
    labels: Optional[PathLike], label_names: Optional[PathLike], affine: np.ndarray, shape: Sequence[int]
) -> tuple[Optional[np.ndarray], Optional[dict[int, str]]]:
    """A label map on the image grid (whole numbers, int32) and its names, or (None, None).

    Names come from ``label_names`` (TSV or JSON) or a ``.tsv`` with the
    label map's name next to it.
    """
    if label_names and not labels:
        raise QSMInputError("--label-names needs --labels.")
    if not labels:
        return None, None
    values = read_map_like(labels, affine, shape, "label map")
    if values.dtype.kind == "f" and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise QSMInputError(f"The label map {labels} must hold whole numbers (one integer per region).")
    if values.min() < 0:
        raise QSMInputError(
            f"The label map {labels} has negative labels (down to {values.min():g}): labels are 0 for background "
            "and positive whole numbers for regions. Renumber them (e.g. with their absolute value).")
    if not values.any():
        raise QSMInputError(f"The label map {labels} is all 0 (background): it has no region to measure.")
    if values.max() > np.iinfo(np.int32).max:
        raise QSMInputError(f"The label map {labels} has labels above {np.iinfo(np.int32).max}: renumber them.")
    names_path = Path(label_names) if label_names else _sibling_tsv(Path(labels))
    return values.astype(np.int32), (read_label_names(names_path) if names_path else None)


def _sibling_tsv(labels_path: Path) -> Optional[Path]:
    name = labels_path.name
    stem = name[:-7] if name.endswith(".nii.gz") else labels_path.stem
    candidate = labels_path.with_name(stem + ".tsv")
    return candidate if candidate.is_file() else None


def _read_mask(path: Optional[PathLike], affine: np.ndarray, shape: Sequence[int]) -> Optional[np.ndarray]:
    if not path:
        return None
    return validate_user_mask(read_map_like(path, affine, shape, "mask"), shape)


def _ms(times_s: Sequence[float]) -> str:
    return ", ".join(f"{1000 * t:g}" for t in times_s)


def checksums(paths: Sequence[Optional[PathLike]]) -> dict[str, str]:
    """Absolute path -> SHA-256 of each given file (None entries skipped)."""
    return {str(Path(p).resolve()): file_checksum(p) for p in paths if p}


def requested_outputs(names: Union[str, Sequence[str]]) -> list[str]:
    """Validate extra output names (comma-separated text or a sequence) against :data:`MAP_FILES`."""
    requested = [o.strip() for o in (names.split(",") if isinstance(names, str) else names) if o.strip()]
    unknown = [o for o in requested if o not in MAP_FILES]
    if unknown:
        raise QSMInputError(f"Unknown output(s) {unknown}; choose from {', '.join(MAP_FILES)}.")
    return requested


def planned_run_files(inputs: RunInputs, requested: Sequence[str], compression: str = "fast", *,
                      rois: Optional[str] = None) -> list[str]:
    """File names a run will write into its output folder (to check before the work)."""
    files = planned_files(requested, inputs.labels is not None or bool(rois), compression)
    if rois:
        files += [map_file_name("rois", compression), ATLAS_FILES["rois_table"], ATLAS_FILES["rois_qc"]]
    return files


def check_rois(rois: Optional[str], inputs: RunInputs) -> None:
    """Check a request for automatic ROIs (``--rois atlas``) before any work.

    Raises
    ------
    QSMInputError
        For an unknown source, together with a label map, without a
        magnitude, or when ``qsmlib[atlas]`` is not installed.
    """
    if not rois:
        return
    if rois not in ROI_SOURCES:
        raise QSMInputError(f"Unknown ROI source {rois!r}; choose from {', '.join(ROI_SOURCES)}.")
    if inputs.labels is not None:
        raise QSMInputError("Give either a label map (--labels) or automatic ROIs (--rois atlas), not both.")
    if inputs.acquisition is None:
        raise QSMInputError("Automatic ROIs (--rois atlas) register the magnitude to a template: give --mag and "
                            "--phase instead of a field map.")
    check_atlas_available()


def add_atlas_rois(inputs: RunInputs, result: QSMResult, *, progress: ProgressCallback = None,
                   cancel: CancelToken = None) -> AtlasROIs:
    """Deep grey matter ROIs from the atlas for a reconstructed run; their statistics replace ``result.roi``.

    The statistics (chi over each ROI inside the local mask, then each
    structure's left and right together) are those of
    :func:`QSMLib.rois.structure_statistics`. The registration uses the
    process's thread count (``--threads``, :mod:`QSMLib._threads`).
    """
    acquisition = inputs.acquisition
    if acquisition is None:
        raise QSMInputError("Automatic ROIs need the magnitude of a multi-echo GRE acquisition.")
    rois = atlas_rois(acquisition.magnitude, inputs.affine, result.mask, threads=thread_count(), progress=progress,
                      cancel=cancel)
    result.roi = structure_statistics(result.chi_ppm, rois.labels, inputs.voxel_size_mm, mask=result.local_mask)
    return rois


def atlas_outputs(rois: AtlasROIs, result: QSMResult, inputs: RunInputs) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, bytes]]:
    """The label map (a map output) and the names table and QC figure (file contents) of automatic ROIs."""
    table = "index\tname\n" + "".join(f"{label}\t{name}\n" for label, name in sorted(rois.names.items()))
    magnitude = combined_magnitude(inputs.acquisition.magnitude) if inputs.acquisition is not None else None
    registration = rois.registration
    figure = atlas_qc(
        magnitude, result.chi_ppm, rois.labels, rois.names, inputs.affine, mask=result.mask,
        title=(f"Automatic deep grey matter ROIs: AAL3 registered to the magnitude (affine mutual information "
               f"{registration.affine_metric:.3f}, final similarity {registration.similarity:.2f}); cores "
               f"{rois.core_depth_mm:g} mm deep"))
    with tempfile.TemporaryDirectory() as folder:
        png = write_png(Path(folder) / ATLAS_FILES["rois_qc"], figure).read_bytes()
    return {"rois": rois.labels}, {ATLAS_FILES["rois_table"]: table.encode(), ATLAS_FILES["rois_qc"]: png}


def reconstruct(
    inputs: RunInputs,
    config: PipelineConfig,
    *,
    requested: Sequence[str] = (),
    overwrite_phase: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> QSMResult:
    """Run the pipeline on what :func:`read_acquisition` or :func:`read_field` read.

    Asking for R2*/T2* outputs turns on the relaxometry stage (log-linear
    fit) when the configuration has none. ``overwrite_phase`` lets the
    phase stages write into the acquisition's phase array (see
    :func:`QSMLib.pipeline.run_pipeline`): ``qsm run`` and cohort tasks,
    which read it only for this, save 830 MB at 256 x 256 x 176 x 9.
    """
    if any(o in RELAXOMETRY_OUTPUTS for o in requested) and config.relaxometry.method == "none":
        config.relaxometry = StageConfig("loglinear")
    if inputs.acquisition is not None:
        return run_pipeline(inputs.acquisition, config, mask=inputs.mask, labels=inputs.labels,
                            label_names=inputs.label_names, overwrite_phase=overwrite_phase, progress=progress,
                            cancel=cancel)
    return run_pipeline_from_field(
        inputs.field_hz, inputs.mask, field_kind=inputs.field_kind, voxel_size_mm=inputs.voxel_size_mm,
        b0_direction=inputs.b0_direction, b0_tesla=inputs.b0_tesla, config=config, labels=inputs.labels,
        label_names=inputs.label_names, progress=progress, cancel=cancel,
    )


def output_maps(result: QSMResult, requested: Sequence[str]) -> dict[str, np.ndarray]:
    """The maps to write: chi, mask, total and local field, and the requested extras that exist.

    Warns (:class:`QSMWarning`) for a requested map this configuration does
    not produce.
    """
    sources = {
        "chi": result.chi_ppm, "mask": result.mask, "local_field": result.local_field_hz,
        "total_field": result.total_field_hz, "local_mask": result.local_mask,
        **{name: result.maps.get(key) for name, key in STAGE_MAP_OUTPUTS.items()},
    }
    maps = {}
    for name in dict.fromkeys(["chi", "mask", "total_field", "local_field", *requested]):
        if sources.get(name) is not None:
            maps[name] = sources[name]
        elif name in requested:
            warnings.warn(f"Output {name!r} is not produced by this configuration (e.g. romeo_quality needs "
                          "romeo unwrapping, phase_offset needs mcpc3ds); it was not written.", QSMWarning,
                          stacklevel=2)
    return maps


def write_run(
    out_dir: PathLike,
    result: QSMResult,
    inputs: RunInputs,
    requested: Sequence[str] = (),
    *,
    provenance: Optional[Mapping[str, Any]] = None,
    compression: str = "fast",
    rois: Optional[AtlasROIs] = None,
) -> dict[str, Path]:
    """Write the maps, the ROI table and ``provenance.json`` of one run (staged, then moved into place).

    ``provenance`` adds entries (e.g. the command line) to the inputs' record;
    ``compression`` is ``fast``, ``best`` or ``none`` (see
    :data:`QSMLib.io.results.COMPRESSION_LEVELS`). The files of an earlier run
    in ``out_dir`` that this run does not write again are removed. ``rois``
    (from :func:`add_atlas_rois`) adds ``rois.nii.gz``, ``rois.tsv`` and
    ``rois_qc.png``, and the registration's record to the provenance.
    """
    maps = output_maps(result, requested)
    extra: dict[str, bytes] = {}
    record = result.provenance({**inputs.provenance, **dict(provenance or {})})
    if rois is not None:
        roi_maps, extra = atlas_outputs(rois, result, inputs)
        maps.update(roi_maps)
        record["rois"] = rois.provenance()
    return write_outputs(out_dir, maps, inputs.affine, roi_rows=result.roi if result.roi else None,
                         provenance=record, extra_files=extra, compression=compression)
