"""NIfTI (and any SimpleITK-readable format) <-> numpy arrays with an affine.

Arrays come in SimpleITK order, (k, j, i) for 3D and (t, k, j, i) for 4D.
Geometry is returned as an ``affine`` that maps (array index along axes
0, 1, 2, 1) to RAS mm, so QSMLib never needs to know the file's axis order.
Writes are atomic (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import SimpleITK as sitk

from .._threads import thread_count
from ..errors import QSMInputError
from .files import file_checksum, temporary_beside

if TYPE_CHECKING:
    from ..acquisition import MultiEchoGRE

PathLike = Union[str, "os.PathLike[str]"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: NIfTI datatype codes this reader decodes and the numpy type of their stored values.
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8"}
#: SimpleITK pixel types and the numpy dtype of the arrays SimpleITK returns for them.
_SITK_DTYPES = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16,
                sitk.sitkInt16: np.int16, sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32,
                sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64, sitk.sitkFloat32: np.float32,
                sitk.sitkFloat64: np.float64}
#: zlib window bits for the gzip format.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
try:
    # ISA-L's inflate: the 256 x 256 x 176 x 9 benchmark phase file (382 MB of gzip) streams through this
    # reader in 1.4 s against zlib's 2.4 s; optional (pip install "qsmlib[fast-io]"), zlib otherwise
    from isal import __version__ as _isal_version
    from isal import isal_zlib as _inflate
    #: The library that inflates ``.nii.gz`` files here (recorded in the run's provenance).
    GZIP_READER = f"isal {_isal_version}"
except ImportError:
    _inflate = zlib  # type: ignore[assignment]
    GZIP_READER = f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
#: Bytes read from a file at a time, and values converted at a time (temporaries of a few tens of MB).
_READ_BYTES = 1 << 22
_CONVERT_VALUES = 1 << 22


def affine_from_image(image: Union[sitk.Image, sitk.ImageFileReader]) -> np.ndarray:
    """Array-index -> RAS affine of the first three axes of a SimpleITK image (or of a file's header)."""
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


@dataclass(frozen=True)
class _Layout:
    """What a file's header says: the array it holds and, for NIfTI, where and how its values are stored.

    ``stored`` is None for files that SimpleITK decodes (not NIfTI, or a
    NIfTI variant this reader does not handle); the values are then read
    with SimpleITK, which turns NaN and infinite values into 0.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray
    stored: Optional[np.dtype] = None
    offset: int = 0
    slope: float = 1.0
    intercept: float = 0.0
    compressed: bool = False


def _inspect(path: Path) -> _Layout:
    """Read the header only: shape, dtype and geometry as SimpleITK sees them, and the NIfTI storage."""
    if not path.is_file():
        raise QSMInputError(f"File not found: {path}.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise QSMInputError(f"Cannot read {path} as an image ({str(error).strip().splitlines()[-1]}).") from None
    if reader.GetDimension() < 3:
        raise QSMInputError(f"{path} is a 2D image (size {reader.GetSize()}); QSM needs 3D volumes.")
    if reader.GetDimension() > 5 or reader.GetNumberOfComponents() != 1:
        raise QSMInputError(
            f"{path} has {reader.GetDimension()} dimensions and {reader.GetNumberOfComponents()} "
            "component(s) per voxel; expected a 3D volume, a 4D (echo) series or 5D (echo, coil) data of scalars."
        )
    shape = tuple(int(n) for n in reversed(reader.GetSize()))
    dtype = _SITK_DTYPES.get(reader.GetPixelID())
    layout = _Layout(path, shape, np.dtype(dtype or np.float64), affine_from_image(reader))
    name = path.name.lower()
    if dtype is None or not name.endswith((".nii", ".nii.gz")):
        return layout
    compressed = name.endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            header = handle.read(544)
    except (EOFError, OSError, zlib.error):
        raise QSMInputError(f"{path} is corrupt or truncated: check the file or export it again.") from None
    storage = _nifti_storage(header)
    if storage is None or storage[0] != math.prod(shape):
        return layout
    _, stored, offset, slope, intercept = storage
    if (slope, intercept) != (1.0, 0.0) and layout.dtype.kind != "f":
        return layout
    return dataclasses.replace(layout, stored=stored, offset=offset, slope=slope, intercept=intercept,
                               compressed=compressed)


def _nifti_storage(header: bytes) -> Optional[tuple[int, np.dtype, int, float, float]]:
    """(number of values, stored dtype with byte order, offset of the values, slope, intercept) of a NIfTI-1/2 header.

    None for anything this reader leaves to SimpleITK (other magic, data
    types such as complex or RGB, non-finite scaling).
    """
    if len(header) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348 and header[344:347] == b"n+1":
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            dims = struct.unpack(endian + "8h", header[40:56])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            slope, intercept = (float(v) for v in struct.unpack(endian + "2f", header[112:120]))
            break
        if sizeof_hdr == 540 and len(header) >= 540 and header[4:7] == b"n+2":
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            slope, intercept = struct.unpack(endian + "2d", header[176:192])
            break
    else:
        return None
    finite_scaling = math.isfinite(slope) and math.isfinite(intercept)
    if datatype not in _NIFTI_DTYPES or not 1 <= dims[0] <= 7 or not finite_scaling:
        return None
    # As ITK: a slope of 0 means "not scaled"; any other slope or intercept scales.
    slope = 1.0 if slope == 0.0 else slope
    count = math.prod(max(int(n), 1) for n in dims[1:dims[0] + 1])
    return count, np.dtype(endian + _NIFTI_DTYPES[datatype]), offset, slope, intercept


def read_volume(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D, 4D or 5D image.

    Returns
    -------
    array : numpy.ndarray
        (k, j, i) for 3D, (t, k, j, i) for 4D, (u, t, k, j, i) for 5D (NIfTI
        dims 5 and 4 first), in the file's dtype (float when the header
        scales integer values). NaN and infinite voxels of floating-point
        NIfTI files are NaN and infinite here too (SimpleITK alone silently
        reads them as 0).
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
    layout = _inspect(Path(path))
    array = np.empty(layout.shape, layout.dtype)
    _read_values(layout, array)
    return array, layout.affine


def _read_values(layout: _Layout, out: np.ndarray) -> str:
    """Decode a file's values into ``out`` (C-contiguous, ``layout``'s shape and dtype) in one pass.

    Returns the SHA-256 of the file's bytes, computed on the same read.
    """
    if out.dtype != layout.dtype:  # stacked with files of another type
        values = np.empty(out.shape, layout.dtype)
        digest = _read_values(layout, values)
        out[...] = values
        return digest
    try:
        if layout.stored is None:
            image = sitk.ReadImage(str(layout.path))
            out[...] = sitk.GetArrayViewFromImage(image)
            return file_checksum(layout.path)
        direct = layout.stored == layout.dtype and (layout.slope, layout.intercept) == (1.0, 0.0)
        target = out if direct else np.empty(out.shape, layout.stored)
        digest = _read_payload(layout, target)
        if not direct:
            flat_in, flat_out = target.reshape(-1), out.reshape(-1)
            for start in range(0, flat_in.size, _CONVERT_VALUES):
                chunk = flat_in[start:start + _CONVERT_VALUES]
                if (layout.slope, layout.intercept) != (1.0, 0.0):
                    # ITK's arithmetic: double precision, then the output type.
                    chunk = chunk.astype(np.float64) * layout.slope + layout.intercept
                flat_out[start:start + _CONVERT_VALUES] = chunk
        return digest
    except (EOFError, OSError, struct.error, zlib.error, _inflate.error):
        raise QSMInputError(f"{layout.path} is corrupt or truncated: check the file or export it again.") from None
    except RuntimeError as error:
        raise QSMInputError(f"Cannot read {layout.path} as an image "
                            f"({str(error).strip().splitlines()[-1]}).") from None


def _read_payload(layout: _Layout, target: np.ndarray) -> str:
    """Fill ``target``'s bytes with the stored values, reading (and hashing) the file once; returns the SHA-256."""
    digest = hashlib.sha256()
    view = memoryview(target.reshape(-1)).cast("B")
    with open(layout.path, "rb") as handle:
        if not layout.compressed:
            header = handle.read(layout.offset)
            digest.update(header)
            if len(header) < layout.offset or handle.readinto(view) < view.nbytes:
                raise EOFError("the file ends before its last voxel")
            digest.update(view)
            for block in iter(lambda: handle.read(_READ_BYTES), b""):
                digest.update(block)
            return digest.hexdigest()
        position = -layout.offset  # bytes of values written so far (the header comes first)
        decompressor, open_member = _inflate.decompressobj(_GZIP_WBITS), False
        for block in iter(lambda: handle.read(_READ_BYTES), b""):
            digest.update(block)
            data = block
            while data:
                if not open_member:
                    # A gzip file may hold several members, and zero padding after the last.
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                    decompressor, open_member = _inflate.decompressobj(_GZIP_WBITS), True
                # Bounded output: a block of a highly compressible file inflates a thousandfold.
                piece = decompressor.decompress(data, _READ_BYTES * 4)
                position = _place(piece, position, view)
                data = decompressor.unconsumed_tail
                if decompressor.eof:
                    data, open_member = decompressor.unused_data, False
    if open_member or position < view.nbytes:
        raise EOFError("the compressed file ends before its last voxel")
    return digest.hexdigest()


def _place(piece: bytes, position: int, view: memoryview) -> int:
    """Copy the part of ``piece`` that belongs to the values into ``view``; returns the new position."""
    start = max(-position, 0)
    if start < len(piece):
        stop = min(len(piece), view.nbytes - position)
        if stop > start:
            view[position + start:position + stop] = memoryview(piece)[start:stop]
    return position + len(piece)


def write_volume(path: PathLike, array: np.ndarray, affine: np.ndarray, *, compression_level: int = 1) -> Path:
    """Write a 3D array in (k, j, i) order atomically; returns the path written.

    A ``.nii.gz`` name is gzip-compressed at ``compression_level`` (1
    fastest, 9 smallest; measured on the 1 mm head's chi, field maps and
    mask, 9 makes them 1 % smaller in total, chi 3 %, for 1.5 times the
    time), any other name is written as SimpleITK writes it. The file appears complete or not at all, with the
    permissions of any new file (the umask's).

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
    gzipped = path.name.lower().endswith(".nii.gz")
    suffix = ".nii" if gzipped else ("".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix)
    temporary = temporary_beside(path, suffix)
    written = [temporary]
    try:
        # SimpleITK writes the header; compressing here (zlib releases the GIL) lets outputs
        # be written in parallel threads, at the level asked for (ITK's NIfTI writer has one).
        sitk.WriteImage(image, str(temporary), False)
        if gzipped:
            written.append(temporary_beside(path, ".nii.gz"))
            _gzip_file(temporary, written[-1], compression_level)
        os.replace(written[-1], path)
    finally:
        for leftover in written:
            leftover.unlink(missing_ok=True)
    return path


def _gzip_file(source: Path, target: Path, level: int) -> None:
    """Compress ``source`` into the gzip file ``target`` (no name or time in its header: same bytes each time).

    Level 1 (``--compress fast``) looks for runs only (zlib's ``Z_RLE``): maps are runs of zeros
    outside the brain and noise-like floats inside, where longer matches are rare and searching for
    them is what costs. Measured on a 256 x 256 x 176 head's maps against level 1's usual search:
    a total field (values everywhere) 88 against 34 MB/s, a masked field 415 against 197 MB/s, a
    mask 713 against 633 MB/s, and no larger (0.928 against 0.931 of the raw size, 0.127 against
    0.131, 0.005 against 0.011). Any gzip reader reads the result.
    """
    strategy = zlib.Z_RLE if level <= 1 else zlib.Z_DEFAULT_STRATEGY
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS, 8, strategy)
    with open(source, "rb") as raw, open(target, "wb") as packed:
        for block in iter(lambda: raw.read(_READ_BYTES), b""):
            packed.write(compressor.compress(block))
        packed.write(compressor.flush())


def same_grid(affine_a: np.ndarray, affine_b: np.ndarray, tolerance_mm: float = 1e-3) -> bool:
    """True when two affines describe the same voxel grid (to ``tolerance_mm``)."""
    return bool(np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=tolerance_mm))


def _plan_echoes(paths: list[Path], role: str) -> tuple[list[_Layout], tuple[int, ...], np.dtype, np.ndarray]:
    """From the headers alone: how one 4D file or several 3D files stack into (echo, k, j, i).

    One 5D file (NIfTI dim 4 = echo, dim 5 = receive coil, as MriResearchTools
    writes uncombined data) stacks into (coil, echo, k, j, i) (see
    :func:`_read_echo_arrays`). Returns the layouts, the stacked shape and
    dtype and the affine.
    """
    if not paths:
        raise QSMInputError(f"No {role} file given.")
    layouts = [_inspect(path) for path in paths]
    for path, layout in zip(paths, layouts):
        if len(layout.shape) == 5 and len(paths) > 1:
            raise QSMInputError(
                f"{path} is 5D (uncombined coils); give it as the only {role} file, with echoes in NIfTI "
                "dimension 4 and coils in dimension 5."
            )
        if len(layout.shape) == 2 or (len(layout.shape) == 3 and min(layout.shape) == 1):
            raise QSMInputError(f"{path} is 2D (shape {layout.shape}); QSM needs 3D volumes.")
    if len(layouts[0].shape) == 5:
        return layouts, layouts[0].shape, layouts[0].dtype, layouts[0].affine
    shapes = [layout.shape if len(layout.shape) == 4 else (1, *layout.shape) for layout in layouts]
    for path, layout, shape in zip(paths[1:], layouts[1:], shapes[1:]):
        if not same_grid(layout.affine, layouts[0].affine) or shape[1:] != shapes[0][1:]:
            raise QSMInputError(
                f"{path} is not on the same voxel grid as {paths[0]}: all echoes must share shape and geometry."
            )
    if len(paths) > 1 and any(shape[0] != 1 for shape in shapes):
        raise QSMInputError(f"Give either one 4D {role} file or one 3D file per echo, not a mix.")
    stacked = (sum(shape[0] for shape in shapes), *shapes[0][1:])
    return layouts, stacked, np.result_type(*(layout.dtype for layout in layouts)), layouts[0].affine


def _read_echo_arrays(plans: list[tuple[list[_Layout], tuple[int, ...], np.dtype, np.ndarray]]
                      ) -> tuple[list[np.ndarray], dict[str, str]]:
    """Read every file of every plan straight into its place in the stacked array, files in parallel.

    Returns the arrays ((echo, k, j, i), or (echo, coil, k, j, i) for 5D
    files) and the SHA-256 of every file read.
    """
    arrays, jobs = [], []
    for layouts, shape, dtype, _ in plans:
        stacked = np.empty(shape, dtype)
        start = 0
        for layout in layouts:
            count = layout.shape[0] if len(layout.shape) >= 4 else 1
            jobs.append((layout, stacked[start:start + count].reshape(layout.shape)))
            start += count
        arrays.append(np.moveaxis(stacked, 0, 1) if len(shape) == 5 else stacked)
    workers = min(thread_count(), len(jobs))
    if workers > 1:
        # inflating (zlib or ISA-L), hashing and file reads release the GIL: files decompress side by side.
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda job: _read_values(*job), jobs))
    else:
        digests = [_read_values(*job) for job in jobs]
    return arrays, {str(layout.path.resolve()): digest for (layout, _), digest in zip(jobs, digests)}


def load_acquisition(
    magnitude_paths: list[PathLike],
    phase_paths: list[PathLike],
    *,
    echo_times_s: Union[list[float], None] = None,
    b0_tesla: Union[float, None] = None,
    phase_scale: str = "auto",
    phase_sign: int = 1,
    bipolar: Union[bool, None] = None,
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
        number of non-finite voxels, ``checksums`` (absolute path -> SHA-256
        of every file read, hashed on the same read), ``gzip_reader`` (the
        library that inflates ``.nii.gz`` files: ISA-L with the ``fast-io``
        extra, else zlib; the values are the same) and, for coil data,
        ``coils_combined``.

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
    magnitude_plan = _plan_echoes(magnitude_files, "magnitude")
    phase_plan = _plan_echoes(phase_files, "phase")
    if magnitude_plan[1] != phase_plan[1]:
        raise QSMInputError(
            f"Magnitude has shape {magnitude_plan[1]} (echo, k, j, i) but phase has {phase_plan[1]}: "
            "they must match. Check that both come from the same series and list the same echoes."
        )
    if not same_grid(magnitude_plan[3], phase_plan[3]):
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

    (magnitude, phase_raw), checksums = _read_echo_arrays([magnitude_plan, phase_plan])
    if phase_scale == "auto":
        check_not_magnitude(phase_raw)
    # The raw phase is ours: float32 phase becomes radians where it lies, with no second 4D array.
    in_place = phase_raw.dtype == np.float32
    phase, info["phase_scale"] = phase_to_radians(phase_raw, phase_scale, out=phase_raw if in_place else None)
    del phase_raw
    if phase.ndim == 5:
        acquisition = MultiEchoGRE.from_coils(
            magnitude, phase, echo_times_s, b0_tesla, affine=magnitude_plan[3], phase_sign=phase_sign,
            bipolar=bipolar, b0_direction=b0_direction,
        )
        info["coils_combined"] = int(phase.shape[1])
    else:
        acquisition = MultiEchoGRE(
            magnitude=magnitude, phase=phase, echo_times_s=echo_times_s, b0_tesla=b0_tesla,
            affine=magnitude_plan[3], phase_sign=phase_sign, bipolar=bipolar, b0_direction=b0_direction,
        )
    info["non_finite_voxels"] = int(acquisition.invalid_voxels.sum())
    info["gzip_reader"] = GZIP_READER
    info["checksums"] = checksums
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
