"""Write a pipeline result to a folder: maps, ROI table, provenance.

Every file is first written into a staging folder inside the output
folder and moved into place only when all of them are complete, so a failed
or cancelled run never leaves a half-written set, and earlier files are
never touched unless the caller allows overwriting.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import numpy as np

from ..errors import QSMInputError
from ..roi import format_tsv
from .bids import json_value
from .nifti import write_volume

#: Output names of each map a run can write (file name -> QSMResult source).
MAP_FILES = {
    "chi": "chi.nii.gz",
    "mask": "mask.nii.gz",
    "total_field": "total_field_hz.nii.gz",
    "local_field": "local_field_hz.nii.gz",
    "local_mask": "local_mask.nii.gz",
    "fit_residual": "fit_residual_rad.nii.gz",
    "field_weight": "field_weight.nii.gz",
    "romeo_quality": "romeo_quality.nii.gz",
    "phase_offset": "phase_offset_rad.nii.gz",
    "r2star": "r2star.nii.gz",
    "t2star": "t2star.nii.gz",
}
#: Outputs that need the relaxometry stage.
RELAXOMETRY_OUTPUTS = ("r2star", "t2star")
ALWAYS_WRITTEN = ("chi", "mask", "total_field", "local_field")
ROI_FILE = "roi_stats.tsv"
PROVENANCE_FILE = "provenance.json"


def planned_files(outputs: Iterable[str], with_roi: bool) -> list[str]:
    """File names a run will write for the requested outputs."""
    names = [MAP_FILES[o] if o in MAP_FILES else f"{o}.nii.gz" for o in dict.fromkeys([*ALWAYS_WRITTEN, *outputs])]
    return names + ([ROI_FILE] if with_roi else []) + [PROVENANCE_FILE]


def check_output_folder(out_dir: Union[str, Path], files: Iterable[str], overwrite: bool) -> Path:
    """Check, before any work and without creating anything, that outputs can be written.

    The folder may not exist yet (it is created when the outputs are
    written), but its nearest existing ancestor must be a writable folder;
    existing outputs are refused unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise QSMInputError(f"The output path {out_dir} exists and is not a folder: choose a folder.")
    ancestor = out_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise QSMInputError(
            f"Cannot write to the output folder {out_dir}: {ancestor} is not a writable folder. "
            "Choose a writable folder."
        )
    existing = [name for name in files if (out_dir / name).exists()]
    if existing and not overwrite:
        raise QSMInputError(
            f"{out_dir} already holds {', '.join(existing)}: choose another folder, or pass --overwrite "
            "to replace them."
        )
    return out_dir


def file_checksum(path: Union[str, Path]) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_outputs(
    out_dir: Union[str, Path],
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    roi_rows: Union[list, None],
    provenance: Mapping[str, Any],
    extra_files: Mapping[str, bytes] = None,
) -> dict[str, Path]:
    """Stage every output, then move them into ``out_dir``; returns name -> final path.

    Maps are returned under their name (``chi``...), the ROI table as
    ``roi_stats``, ``extra_files`` under their file name.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise QSMInputError(f"Cannot create the output folder {out_dir} ({error.strerror}).") from None
    staging = Path(tempfile.mkdtemp(prefix=".qsm-staging-", dir=out_dir))
    try:
        staged: dict[str, Path] = {}
        for name, volume in maps.items():
            file_name = MAP_FILES.get(name, f"{name}.nii.gz")
            staged[name] = write_volume(staging / file_name, np.asarray(volume), affine)
        if roi_rows is not None:
            staged["roi_stats"] = staging / ROI_FILE
            staged["roi_stats"].write_text(format_tsv(roi_rows))
        for file_name, content in (extra_files or {}).items():
            staged[file_name] = staging / file_name
            (staging / file_name).write_bytes(content)
        staged["provenance"] = staging / PROVENANCE_FILE
        staged["provenance"].write_text(json.dumps(provenance, indent=2, default=json_value))
        final = {}
        for key, path in staged.items():
            target = out_dir / path.name
            os.replace(path, target)
            final[key] = target.resolve()
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
