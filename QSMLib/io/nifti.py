"""NIfTI (and any SimpleITK-readable format) <-> numpy arrays with an affine.

Arrays come in SimpleITK order, (k, j, i) for 3D and (t, k, j, i) for 4D.
Geometry is returned as an ``affine`` that maps (array index along axes
0, 1, 2, 1) to RAS mm, so QSMLib never needs to know the file's axis order.
Writes are atomic (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import SimpleITK as sitk

from ..errors import QSMInputError

if TYPE_CHECKING:
    from ..acquisition import MultiEchoGRE

PathLike = Union[str, "os.PathLike[str]"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: NIfTI datatype codes of floating-point payloads and their numpy dtypes.
_NIFTI_FLOAT_DTYPES = {16: "f4", 64: "f8"}


def affine_from_image(image: sitk.Image) -> np.ndarray:
    """Array-index -> RAS affine of the first three axes of a SimpleITK image."""
    dimension = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    spacing = np.array(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.array(image.GetOrigin(), dtype=np.float64)[:3]
    lps = np.eye(4)
    # Array axis 0 is SimpleITK index k (the last), so columns are reversed.
    lps[:3, :3] = (direction * spacing)[:, ::-1]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def image_from_array(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image of a 3D array in (k, j, i) order with an array-index -> RAS affine."""
    if array.ndim != 3:
        raise QSMInputError(f"Only 3D volumes can be written, got shape {array.shape}.")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    columns = lps[:3, :3][:, ::-1]
    spacing = np.linalg.norm(columns, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (columns / spacing).reshape(-1)))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return image


def read_volume(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D, 4D or 5D image.

    Returns
    -------
    array : numpy.ndarray
        (k, j, i) for 3D, (t, k, j, i) for 4D, (u, t, k, j, i) for 5D (NIfTI
        dims 5 and 4 first), in the file's dtype. NaN
        voxels of floating-point NIfTI files are NaN here too (SimpleITK
        alone silently reads them as 0).
    affine : numpy.ndarray, shape (4, 4)
        Array-index -> RAS mm for the spatial axes.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> path = write_volume(pathlib.Path(tempfile.mkdtemp()) / "mask.nii.gz", np.ones((2, 3, 4), np.uint8), np.eye(4))
    >>> volume, affine = read_volume(path)
    >>> volume.shape, volume.dtype
    ((2, 3, 4), dtype('uint8'))
    """
    path = Path(path)
    if not path.is_file():
        raise QSMInputError(f"File not found: {path}.")
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        nan_mask = _nifti_nan_mask(path, array.shape)
    except (EOFError, OSError, struct.error, zlib.error):
        raise QSMInputError(f"{path} is corrupt or truncated: check the file or export it again.") from None
    except RuntimeError as error:
        raise QSMInputError(f"Cannot read {path} as an image ({str(error).strip().splitlines()[-1]}).") from None
    if image.GetDimension() < 3:
        raise QSMInputError(f"{path} is a 2D image (size {image.GetSize()}); QSM needs 3D volumes.")
    if image.GetDimension() > 5 or image.GetNumberOfComponentsPerPixel() != 1:
        raise QSMInputError(
            f"{path} has {image.GetDimension()} dimensions and {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel; expected a 3D volume, a 4D (echo) series or 5D (echo, coil) data of scalars."
        )
    if nan_mask is not None:
        array = array.astype(np.result_type(array.dtype, np.float32), copy=False)
        array[nan_mask] = np.nan
    return array, affine_from_image(image)


def _nifti_nan_mask(path: Path, shape: tuple[int, ...]) -> Union[np.ndarray, None]:
    """Where a floating-point NIfTI file stores NaN, in SimpleITK array order; None if nowhere."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(540)
        if len(header) < 348:
            return None
        sizeof_hdr = struct.unpack("<i", header[:4])[0]
        endian = "<" if sizeof_hdr in (348, 540) else ">"
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
        else:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            vox_offset = int(struct.unpack(endian + "q", header[168:176])[0])
        if datatype not in _NIFTI_FLOAT_DTYPES:
            return None
        handle.seek(vox_offset)
        count = int(np.prod(shape))
        payload = np.frombuffer(handle.read(count * np.dtype(_NIFTI_FLOAT_DTYPES[datatype]).itemsize),
                                dtype=endian + _NIFTI_FLOAT_DTYPES[datatype])
    if payload.size != count:
        return None
    nan_mask = np.isnan(payload)
    return nan_mask.reshape(shape) if nan_mask.any() else None


def write_volume(path: PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array in (k, j, i) order atomically; returns the path written.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> affine = np.diag([1.0, 1.0, 2.0, 1.0])
    >>> path = write_volume(folder / "chi.nii.gz", np.zeros((4, 5, 6), np.float32), affine)
    >>> volume, read_affine = read_volume(path)
    >>> volume.shape, bool(np.allclose(read_affine, affine))
    ((4, 5, 6), True)
    """
    path = Path(path)
    image = image_from_array(array, affine)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def same_grid(affine_a: np.ndarray, affine_b: np.ndarray, tolerance_mm: float = 1e-3) -> bool:
    """True when two affines describe the same voxel grid (to ``tolerance_mm``)."""
    return bool(np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=tolerance_mm))


def _read_echoes(paths: list[Path], role: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack one 4D file or several 3D files into (echo, k, j, i).

    One 5D file (NIfTI dim 4 = echo, dim 5 = receive coil, as MriResearchTools
    writes uncombined data) gives (echo, coil, k, j, i).
    """
    if not paths:
        raise QSMInputError(f"No {role} file given.")
    volumes, affines = [], []
    for path in paths:
        array, affine = read_volume(path)
        if array.ndim == 5:
            if len(paths) > 1:
                raise QSMInputError(
                    f"{path} is 5D (uncombined coils); give it as the only {role} file, with echoes in NIfTI "
                    "dimension 4 and coils in dimension 5."
                )
            return np.moveaxis(array, 0, 1), affine
        if array.ndim == 2 or (array.ndim == 3 and min(array.shape) == 1):
            raise QSMInputError(f"{path} is 2D (shape {array.shape}); QSM needs 3D volumes.")
        volumes.append(array if array.ndim == 4 else array[np.newaxis])
        affines.append(affine)
    for path, affine in zip(paths[1:], affines[1:]):
        if not same_grid(affine, affines[0]) or volumes[0].shape[1:] != volumes[paths.index(path)].shape[1:]:
            raise QSMInputError(
                f"{path} is not on the same voxel grid as {paths[0]}: all echoes must share shape and geometry."
            )
    if len(paths) > 1 and any(v.shape[0] != 1 for v in volumes):
        raise QSMInputError(f"Give either one 4D {role} file or one 3D file per echo, not a mix.")
    return np.concatenate(volumes, axis=0), affines[0]


def load_acquisition(
    magnitude_paths: list[PathLike],
    phase_paths: list[PathLike],
    *,
    echo_times_s: Union[list[float], None] = None,
    b0_tesla: Union[float, None] = None,
    phase_scale: str = "auto",
    phase_sign: int = 1,
    bipolar: bool = False,
    b0_direction: Union[list[float], None] = None,
) -> tuple[MultiEchoGRE, dict]:
    """Build a :class:`~QSMLib.acquisition.MultiEchoGRE` from image files.

    Parameters
    ----------
    magnitude_paths, phase_paths : list of path
        One 4D file each (echo last in the file, first in the array) or one
        3D file per echo in echo order; or one 5D file each of uncombined
        coil data (NIfTI dim 4 = echo, dim 5 = coil), combined by
        MCPC-3D-S (:meth:`MultiEchoGRE.from_coils`).
    echo_times_s : list of float, optional
        Echo times in seconds; when omitted they come from the ``EchoTime``
        entries of BIDS JSON sidecars next to the phase (or magnitude) files.
    b0_tesla : float, optional
        Field strength; when omitted, from ``ImagingFrequency`` (preferred)
        or ``MagneticFieldStrength`` in the sidecars.
    phase_scale : str
        See :func:`QSMLib.phase.scaling.phase_to_radians`.
    phase_sign, bipolar
        Passed to :class:`MultiEchoGRE`.
    b0_direction : list of float, optional
        B0 in array-axis coordinates; default from the file's orientation.

    Returns
    -------
    acquisition : MultiEchoGRE
        Arrays in (echo, k, j, i) order with the file's affine.
    info : dict
        ``phase_scale`` applied, where echo times and B0 came from, the
        number of non-finite voxels and, for coil data, ``coils_combined``.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan(echo_times_s=(0.004, 0.008))
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> files = {"mag": [], "phase": []}
    >>> acq = scan.acquisition
    >>> for part, volumes in (("mag", acq.magnitude), ("phase", acq.phase)):
    ...     for echo, (volume, te) in enumerate(zip(volumes, acq.echo_times_s), start=1):
    ...         path = write_volume(folder / f"sub-1_echo-{echo}_part-{part}_MEGRE.nii.gz", volume, acq.affine)
    ...         sidecar = {"EchoTime": te, "MagneticFieldStrength": 3}
    ...         _ = path.with_name(path.name[:-7] + ".json").write_text(json.dumps(sidecar))
    ...         files[part].append(path)
    >>> acquisition, info = load_acquisition(files["mag"], files["phase"], phase_scale="radians")
    >>> acquisition.echo_times_s, acquisition.b0_tesla, info["phase_scale"]
    ((0.004, 0.008), 3.0, 'radians')
    """
    from ..acquisition import MultiEchoGRE
    from ..phase.scaling import check_not_magnitude, phase_to_radians
    from .bids import echo_times_from_sidecars, field_strength_from_sidecars, read_sidecar

    magnitude_files = [Path(p) for p in magnitude_paths]
    phase_files = [Path(p) for p in phase_paths]
    magnitude, magnitude_affine = _read_echoes(magnitude_files, "magnitude")
    phase_raw, phase_affine = _read_echoes(phase_files, "phase")
    if magnitude.shape != phase_raw.shape:
        raise QSMInputError(
            f"Magnitude has shape {magnitude.shape} (echo, k, j, i) but phase has {phase_raw.shape}: "
            "they must match. Check that both come from the same series and list the same echoes."
        )
    if not same_grid(magnitude_affine, phase_affine):
        raise QSMInputError("Magnitude and phase files have different geometry (affine): use matching files.")

    sidecars = [read_sidecar(p) for p in phase_files] + [read_sidecar(p) for p in magnitude_files]
    info: dict = {}
    if echo_times_s is None:
        echo_times_s = echo_times_from_sidecars([read_sidecar(p) for p in phase_files]) or (
            echo_times_from_sidecars([read_sidecar(p) for p in magnitude_files])
        )
        info["echo_times_source"] = "sidecar"
        if echo_times_s is None:
            raise QSMInputError(
                "No echo times: none were given and no JSON sidecar next to the files has 'EchoTime'. "
                "Give them in seconds, e.g. --te 0.004,0.008,0.012."
            )
    else:
        info["echo_times_source"] = "argument"
    if b0_tesla is None:
        b0_tesla, info["b0_source"] = field_strength_from_sidecars(sidecars)
        if b0_tesla is None:
            raise QSMInputError(
                "No field strength: none was given and no sidecar has 'ImagingFrequency' or "
                "'MagneticFieldStrength'. Give it in tesla, e.g. --b0 3."
            )
    else:
        info["b0_source"] = "argument"

    if phase_scale == "auto":
        check_not_magnitude(phase_raw)
    phase, info["phase_scale"] = phase_to_radians(phase_raw, phase_scale)
    if phase.ndim == 5:
        info["non_finite_voxels"] = int(np.any(~np.isfinite(phase_raw) | ~np.isfinite(magnitude), axis=(0, 1)).sum())
        info["coils_combined"] = int(phase.shape[1])
        acquisition = MultiEchoGRE.from_coils(
            magnitude, phase, echo_times_s, b0_tesla, affine=magnitude_affine, phase_sign=phase_sign,
            bipolar=bipolar, b0_direction=b0_direction,
        )
        return acquisition, info
    info["non_finite_voxels"] = int(np.any(~np.isfinite(phase_raw) | ~np.isfinite(magnitude), axis=0).sum())
    acquisition = MultiEchoGRE(
        magnitude=magnitude,
        phase=phase,
        echo_times_s=echo_times_s,
        b0_tesla=b0_tesla,
        affine=magnitude_affine,
        phase_sign=phase_sign,
        bipolar=bipolar,
        b0_direction=b0_direction,
    )
    return acquisition, info


def read_map_like(path: PathLike, affine: np.ndarray, shape: tuple[int, ...], role: str) -> np.ndarray:
    """Read a 3D map (mask, labels, field) that must lie on a given grid."""
    array, map_affine = read_volume(path)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape) or not same_grid(map_affine, affine):
        raise QSMInputError(
            f"The {role} {path} (shape {array.shape}) is not on the image grid (shape {tuple(shape)}): "
            "resample it onto the magnitude/phase grid first."
        )
    return array
