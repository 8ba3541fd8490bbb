"""Finding the multi-echo GRE acquisitions (and their label maps) of a BIDS dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import SimpleITK as sitk

from ..acquisition import b0_direction_from_affine
from ..dipole import axes_along_b0
from ..errors import QSMInputError
from ..io.bids import parse_bids_name, sidecar_path
from ..io.nifti import affine_from_image
from .layout import Acquisition, PathLike


def find_acquisitions(
    bids_root: PathLike,
    participant_labels: Optional[Sequence[str]] = None,
    labels_dir: Optional[PathLike] = None,
) -> list[Acquisition]:
    """Multi-echo GRE acquisitions of a BIDS dataset, one per subject/session/acq/run.

    Parameters
    ----------
    bids_root : path
        The dataset root (holding ``sub-*`` folders).
    participant_labels : sequence of str, optional
        Only these subjects (with or without the ``sub-`` prefix).
    labels_dir : path, optional
        A derivatives folder with label maps on each acquisition's grid:
        ``sub-X/[ses-Y/]anat/<acquisition prefix>[_...]_dseg.nii.gz`` (or a
        subject/session-level ``sub-X[_ses-Y][_...]_dseg.nii.gz``), with names
        in a sibling ``.tsv`` or in ``dseg.tsv`` at its root.

    Returns
    -------
    list of Acquisition
        Sorted by name; those that cannot be processed carry a ``problem``.
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise QSMInputError(f"The BIDS folder {root} does not exist: give the dataset root (with sub-* folders).")
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if participant_labels:
        wanted = {label[4:] if label.startswith("sub-") else label for label in participant_labels}
        missing = sorted(wanted - {p.name[4:] for p in subjects})
        if missing:
            raise QSMInputError(f"No subject folder for participant label(s) {', '.join(missing)} in {root}; "
                                f"found {', '.join(p.name for p in subjects) or 'none'}.")
        subjects = [p for p in subjects if p.name[4:] in wanted]
    groups: dict[tuple[tuple[str, str], ...], dict[str, dict[Optional[str], Path]]] = {}
    misplaced: list[str] = []
    for subject in subjects:
        for anat in [subject / "anat", *sorted(subject.glob("ses-*/anat"))]:
            folders = {"sub": subject.name[4:], "ses": anat.parent.name[4:] if anat.parent != subject else None}
            for path in sorted(anat.glob("*_MEGRE.nii*")):
                parsed = parse_bids_name(path.name)
                if parsed is None or parsed[2] not in (".nii", ".nii.gz"):
                    continue
                entities = dict(parsed[0])
                wrong = [_disagreement(key, entities.get(key), folders[key])
                         for key in ("sub", "ses") if entities.get(key) != folders[key]]
                if wrong:
                    misplaced.append(f"{path.relative_to(root).as_posix()} says {' and '.join(wrong)}")
                    continue
                part = entities.pop("part", "mag")
                echo = entities.pop("echo", None)
                groups.setdefault(tuple(entities.items()), {}).setdefault(part, {})[echo] = path
    if misplaced:
        shown = "; ".join(misplaced[:5]) + (f"; and {len(misplaced) - 5} more" if len(misplaced) > 5 else "")
        raise QSMInputError(
            f"File names disagree with the folders they are in: {shown}. In BIDS the sub- and ses- entities of a "
            "file name are those of its folders: rename or move these files."
        )
    acquisitions = [_acquisition(key, parts, labels_dir) for key, parts in groups.items()]
    if not acquisitions:
        raise QSMInputError(
            f"No multi-echo GRE data found in {root}: expected files such as "
            "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz and ..._part-phase_MEGRE.nii.gz."
        )
    return sorted(acquisitions, key=lambda a: a.name)


def _disagreement(key: str, in_name: Optional[str], in_folder: Optional[str]) -> str:
    name = f"{key}-{in_name}" if in_name is not None else f"no {key}- entity"
    return f"{name} (folder: {f'{key}-{in_folder}' if in_folder is not None else f'no {key}- folder'})"


def _acquisition(key: tuple[tuple[str, str], ...], parts: dict[str, dict[Optional[str], Path]],
                 labels_dir: Optional[PathLike]) -> Acquisition:
    def problem(reason: str) -> Acquisition:
        return Acquisition(key, (), (), problem=reason)

    unsupported = sorted(set(parts) - {"mag", "phase"})
    if unsupported:
        return problem(f"parts {', '.join(unsupported)} are not supported: give part-mag and part-phase files "
                       "(qsm dicom2bids converts real/imaginary DICOM to magnitude and phase).")
    if "phase" not in parts or "mag" not in parts:
        return problem(f"no part-{'phase' if 'phase' not in parts else 'mag'} files: QSM needs magnitude and phase.")
    if set(parts["mag"]) != set(parts["phase"]):
        return problem(f"magnitude echoes {_echo_list(parts['mag'])} and phase echoes "
                       f"{_echo_list(parts['phase'])} differ: every echo needs both parts.")
    numbers = list(parts["mag"])
    if None in numbers and len(numbers) > 1:
        return problem("files with and without an echo entity: give one 4D file per part or one file per echo.")
    if None not in numbers and not all(n.isdigit() for n in numbers):
        return problem(f"echo entities {_echo_list(parts['mag'])} are not integers.")
    order = sorted(numbers, key=lambda n: int(n) if n is not None else 0)
    # Absolute but not resolved: in a DataLad/git-annex dataset the images are links into the annex, and
    # their sidecars lie next to the links, not next to the annexed content.
    magnitude = tuple(os.path.abspath(parts["mag"][n]) for n in order)
    phase = tuple(os.path.abspath(parts["phase"][n]) for n in order)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(magnitude[0])
        reader.ReadImageInformation()
        size, spacing = reader.GetSize(), reader.GetSpacing()
    except RuntimeError as error:
        return Acquisition(key, magnitude, phase, problem=f"cannot read {Path(magnitude[0]).name} "
                           f"({str(error).strip().splitlines()[-1]}).")
    n_voxels = int(size[0] * size[1] * size[2]) if len(size) >= 3 else 0
    n_echoes = len(magnitude) if len(size) < 4 else int(size[3])
    labels, names, reason = _find_labels(labels_dir, dict(key)) if labels_dir else (None, None, None)
    # array axes are ITK's in reverse (the arrays are read as SimpleITK hands them over)
    grid = ((tuple(int(n) for n in size[2::-1]), tuple(float(v) for v in spacing[2::-1]),
             tuple(bool(along) for along in axes_along_b0(b0_direction_from_affine(affine_from_image(reader)))))
            if len(size) >= 3 else ((), (), ()))
    return Acquisition(key, magnitude, phase, labels, names, n_voxels, n_echoes, reason, *grid)


def _echo_list(files: Mapping[Optional[str], Path]) -> str:
    return "[" + ", ".join(str(n) for n in sorted(files, key=str)) + "]"


def _find_labels(labels_dir: PathLike, entities: dict[str, str]) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(label map, label names, problem) of one acquisition in a derivatives folder."""
    root = Path(labels_dir)
    if not root.is_dir():
        raise QSMInputError(f"The label folder {root} does not exist.")
    folder = root / f"sub-{entities['sub']}" / (f"ses-{entities['ses']}" if "ses" in entities else "") / "anat"
    candidates = sorted(folder.glob("*_dseg.nii*"))
    prefix = "_".join(f"{k}-{v}" for k, v in entities.items()) + "_"
    level = "_".join(f"{k}-{entities[k]}" for k in ("sub", "ses") if k in entities) + "_"
    exact = [p for p in candidates if p.name.startswith(prefix)]
    # A subject/session-level label map serves every run, so it must not name an acq or run itself.
    shared = [p for p in candidates if p.name.startswith(level)
              and not {"acq", "run"} & set((parse_bids_name(p.name) or ({},))[0])]
    for matches in (exact, shared):
        if len(matches) > 1:
            return None, None, f"several label maps match: {', '.join(p.name for p in matches)}; keep one."
        if matches:
            names = sidecar_path(matches[0]).with_suffix(".tsv")
            names = names if names.is_file() else root / "dseg.tsv"
            return os.path.abspath(matches[0]), (os.path.abspath(names) if names.is_file() else None), None
    return None, None, None
