"""Reading each file once, writing outputs in parallel: the values equal SimpleITK's, non-finite voxels survive,
outputs follow the umask, and an overwrite replaces the whole previous set (and nothing else)."""

import gzip
import json
import os
import stat
import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
import threadpoolctl
from synthetic import toy_head, write_acquisition

from QSMLib import _backend
from QSMLib.cli import EXIT_INPUT, EXIT_OK, main
from QSMLib.errors import QSMInputError
from QSMLib.io import nifti
from QSMLib.io.files import file_checksum, new_file_mode
from QSMLib.io.nifti import load_acquisition, read_volume, write_volume

_NIFTI_CODES = {np.dtype("u1"): 2, np.dtype("i2"): 4, np.dtype("i4"): 8, np.dtype("f4"): 16, np.dtype("f8"): 64,
                np.dtype("u2"): 512}


def _nifti_bytes(values: np.ndarray, *, endian: str = "<", slope: float = 0.0, intercept: float = 0.0,
                 spacing=(1.0, 1.5, 2.0), origin=(-10.0, 20.0, 5.0)) -> bytes:
    """A NIfTI-1 single file written by hand (not by SimpleITK): ``values`` in NIfTI (i, j, k[, t]) order."""
    dtype = values.dtype.newbyteorder("=")
    header = bytearray(352)
    dims = [values.ndim, *values.shape] + [1] * (7 - values.ndim)
    struct.pack_into(endian + "i", header, 0, 348)
    struct.pack_into(endian + "8h", header, 40, *dims)
    struct.pack_into(endian + "hh", header, 70, _NIFTI_CODES[dtype], dtype.itemsize * 8)
    struct.pack_into(endian + "8f", header, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(endian + "fff", header, 108, 352.0, slope, intercept)
    struct.pack_into(endian + "hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row, values_row in enumerate(np.diag([*spacing, 1.0])[:3]):
        struct.pack_into(endian + "4f", header, 280 + 16 * row, *values_row[:3], origin[row])
    header[344:348] = b"n+1\0"
    return bytes(header) + values.astype(dtype.newbyteorder(endian)).tobytes(order="F")


def _sitk_read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image)


@pytest.mark.parametrize("case", ["float32", "int16 scaled", "int16 big-endian scaled", "uint8", "float64 4D",
                                  "uint16 unscaled", "float32 scaled"])
@pytest.mark.parametrize("compressed", [False, True])
def test_values_and_geometry_equal_simpleitk(tmp_path, case, compressed):
    rng = np.random.default_rng(3)
    options = {}
    if case.startswith("float32"):
        values = rng.standard_normal((9, 7, 5)).astype(np.float32)
        if "scaled" in case:
            options = {"slope": 3.3, "intercept": 0.1}
    elif case.startswith("int16"):
        values = rng.integers(-4096, 4096, (9, 7, 5)).astype(np.int16)
        options = {"slope": np.pi / 4096, "intercept": -0.25, "endian": ">" if "big" in case else "<"}
    elif case == "uint8":
        values = rng.integers(0, 2, (9, 7, 5)).astype(np.uint8)
    elif case == "uint16 unscaled":
        values = rng.integers(0, 4096, (9, 7, 5)).astype(np.uint16)
        options = {"slope": 1.0}
    else:
        values = rng.standard_normal((9, 7, 5, 3))
    content = _nifti_bytes(values, **options)
    path = tmp_path / ("v.nii.gz" if compressed else "v.nii")
    path.write_bytes(gzip.compress(content) if compressed else content)

    array, affine = read_volume(path)
    expected = _sitk_read(path)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)
    reference = sitk.ReadImage(str(path))
    index = (1, 2, 3)  # array index (axis 0, 1, 2) = SimpleITK index (3, 2, 1)
    lps = reference.TransformIndexToPhysicalPoint([*index[::-1], *[0] * (reference.GetDimension() - 3)])
    np.testing.assert_allclose((affine @ [*index, 1])[:3], [-lps[0], -lps[1], lps[2]], atol=1e-5)


def test_non_finite_values_survive_where_simpleitk_reads_zero(tmp_path):
    values = np.ones((6, 5, 4), np.float32)
    values[1, 1, 1], values[2, 3, 1], values[4, 0, 3] = np.nan, np.inf, -np.inf
    path = tmp_path / "v.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(values)))
    array, _ = read_volume(path)
    assert np.isnan(array[1, 1, 1]) and array[1, 3, 2] == np.inf and array[3, 0, 4] == -np.inf
    assert np.isfinite(array).sum() == values.size - 3
    assert np.isfinite(_sitk_read(path)).all()  # what SimpleITK alone would give


def test_multi_member_gzip_and_checksums_of_the_same_read(tmp_path):
    values = np.arange(6 * 5 * 4 * 2, dtype=np.float32).reshape(6, 5, 4, 2)
    content = _nifti_bytes(values)
    path = tmp_path / "v.nii.gz"
    middle = len(content) // 2
    path.write_bytes(gzip.compress(content[:middle]) + gzip.compress(content[middle:]))
    np.testing.assert_array_equal(read_volume(path)[0], values.transpose(3, 2, 1, 0))
    for echo in range(2):
        write_volume(tmp_path / f"mag{echo}.nii.gz", values[..., echo].T + 1, np.eye(4))
        write_volume(tmp_path / f"phase{echo}.nii.gz", np.full((4, 5, 6), 0.5 * echo - 0.25, np.float32) +
                     np.linspace(-1, 1, 120, dtype=np.float32).reshape(4, 5, 6), np.eye(4))
    acquisition, info = load_acquisition([tmp_path / "mag0.nii.gz", tmp_path / "mag1.nii.gz"],
                                         [tmp_path / "phase0.nii.gz", tmp_path / "phase1.nii.gz"],
                                         echo_times_s=[0.005, 0.01], b0_tesla=3.0, phase_scale="radians")
    np.testing.assert_array_equal(acquisition.magnitude[1], values[..., 1].T + 1)  # echoes in order
    assert list(info["checksums"]) == [str((tmp_path / f"{role}{echo}.nii.gz").resolve())
                                       for role in ("mag", "phase") for echo in range(2)]
    assert all(digest == file_checksum(name) for name, digest in info["checksums"].items())


@pytest.fixture(params=["zlib", "isal"])
def inflater(request, monkeypatch):
    """Read with zlib, or with ISA-L (the optional ``fast-io`` extra, a test dependency)."""
    if request.param == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib", reason="isal (qsmlib[fast-io]) is not installed")
        monkeypatch.setattr(nifti, "_inflate", isal_zlib)
    else:
        monkeypatch.setattr(nifti, "_inflate", zlib)
    return request.param


def test_both_inflaters_read_the_same_values_and_report_the_same_damage(tmp_path, inflater):
    values = np.random.default_rng(3).standard_normal((100, 80, 60)).astype(np.float32)
    content = _nifti_bytes(values)
    good = tmp_path / "good.nii.gz"
    # three members, zero padding after the last (as some writers leave it)
    thirds = [content[: len(content) // 3], content[len(content) // 3: 2 * len(content) // 3],
              content[2 * len(content) // 3:]]
    good.write_bytes(b"".join(gzip.compress(part) for part in thirds) + b"\0" * 64)
    array, _ = read_volume(good)
    np.testing.assert_array_equal(array, values.transpose(2, 1, 0))
    compressed = gzip.compress(content)
    packed = bytearray(compressed)
    damaged = tmp_path / "damaged.nii.gz"
    packed[-4000:-3936] = bytes(range(64))  # a broken deflate stream near the end (the header reads fine)
    damaged.write_bytes(bytes(packed))
    with pytest.raises(QSMInputError, match="corrupt or truncated"):
        read_volume(damaged)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(QSMInputError, match="corrupt or truncated"):
        read_volume(truncated)


def test_a_truncated_gzip_member_is_reported(tmp_path):
    path = tmp_path / "v.nii.gz"
    # Only the gzip trailer (CRC, length) is cut: every value is there, the file is still incomplete.
    path.write_bytes(gzip.compress(_nifti_bytes(np.ones((8, 8, 8), np.float32)))[:-6])
    with pytest.raises(QSMInputError, match="corrupt or truncated"):
        read_volume(path)


def test_compressed_output_reads_back_and_follows_the_umask(tmp_path):
    volume = np.random.default_rng(0).standard_normal((12, 10, 8)).astype(np.float32)
    previous = os.umask(0o027)
    try:
        packed = write_volume(tmp_path / "a.nii.gz", volume, np.eye(4), compression_level=9)
        plain = write_volume(tmp_path / "a.nii", volume, np.eye(4))
        assert new_file_mode() == 0o640
    finally:
        os.umask(previous)
    assert stat.S_IMODE(packed.stat().st_mode) == 0o640 and stat.S_IMODE(plain.stat().st_mode) == 0o640
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()  # the same NIfTI, compressed
    np.testing.assert_array_equal(_sitk_read(packed), volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii", "a.nii.gz"]  # no temporary left


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    magnitude, phase, brain, _ = toy_head(shape=(24, 28, 20), voxel_mm=(7.0, 7.0, 7.0))
    affine = np.diag([7.0, 7.0, 7.0, 1.0])
    files = {"clean": write_acquisition(folder / "clean", magnitude, phase, affine)}
    # Inf in the phase of one echo and -Inf in the magnitude of another, inside the brain
    inside = np.argwhere(brain)[::37][:12]
    phase_bad, magnitude_bad = phase.copy(), magnitude.copy()
    phase_bad[1][tuple(inside[:6].T)] = np.inf
    magnitude_bad[2][tuple(inside[6:].T)] = -np.inf
    files["inf"] = write_acquisition(folder / "inf", magnitude_bad, phase_bad, affine)
    files["inf_voxels"] = inside
    labels = np.where(brain, 1, 0).astype(np.int16)
    files["labels"] = str(write_volume(folder / "labels.nii.gz", labels, affine))
    return files


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_infinite_input_voxels_are_reported_and_left_out_of_the_mask(toy_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    bad = toy_inputs["inf"]
    code, _, stderr = _run(["run", "--mag", *bad["mag"], "--phase", *bad["phase"], "--config", "fast",
                            "--out", str(out)], capsys)
    assert code == EXIT_OK, stderr
    assert "12 voxel(s)" in stderr and "NaN or infinite" in stderr
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["inputs"]["non_finite_voxels"] == 12
    assert provenance["inputs"]["gzip_reader"] == nifti.GZIP_READER  # which library inflated the inputs
    assert nifti.GZIP_READER.split()[0] in ("isal", "zlib")
    mask, _ = read_volume(out / "mask.nii.gz")
    chi, _ = read_volume(out / "chi.nii.gz")
    voxels = tuple(toy_inputs["inf_voxels"].T)
    assert not mask[voxels].any() and mask.sum() > 1000
    assert np.isfinite(chi).all() and np.all(chi[voxels] == 0)


def test_overwrite_replaces_the_previous_set_and_nothing_else(toy_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    clean = toy_inputs["clean"]
    first = ["run", "--mag", *clean["mag"], "--phase", *clean["phase"], "--config", "fast", "--out", str(out)]
    code, _, stderr = _run([*first, "--labels", toy_inputs["labels"], "--outputs", "local_mask,r2star"], capsys)
    assert code == EXIT_OK, stderr
    listed = json.loads((out / "provenance.json").read_text())["outputs"]
    assert {"roi_stats.tsv", "r2star.nii.gz", "local_mask.nii.gz", "chi.nii.gz"} <= set(listed)
    (out / "notes.txt").write_text("mine")
    (out / "t2star.nii.gz").write_bytes(b"not written by QSMLib")  # an output name, but not in the provenance

    code, _, stderr = _run([*first, "--compress", "none"], capsys)
    assert code == EXIT_INPUT and "--overwrite" in stderr  # nothing is replaced without asking
    code, _, stderr = _run([*first, "--compress", "none", "--overwrite"], capsys)
    assert code == EXIT_OK, stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"chi.nii", "mask.nii", "total_field_hz.nii", "local_field_hz.nii", "provenance.json",
                     "notes.txt", "t2star.nii.gz"}
    assert json.loads((out / "provenance.json").read_text())["outputs"] == [
        "chi.nii", "mask.nii", "total_field_hz.nii", "local_field_hz.nii"]
    assert all(stat.S_IMODE((out / name).stat().st_mode) == new_file_mode() for name in names - {"notes.txt"})


def test_threads_change_the_speed_not_the_results(toy_inputs, tmp_path, capsys):
    clean = toy_inputs["clean"]
    chis = []
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        code, _, stderr = _run(["run", "--mag", *clean["mag"], "--phase", *clean["phase"], "--config", "consensus",
                                "--threads", str(threads), "--out", str(out)], capsys)
        assert code == EXIT_OK, stderr
        assert json.loads((out / "provenance.json").read_text())["config"]["threads"] == threads
        chis.append(read_volume(out / "chi.nii.gz")[0])
    np.testing.assert_array_equal(chis[0], chis[1])
    assert np.abs(chis[0]).max() > 0.01
    code, _, stderr = _run(["run", "--mag", *clean["mag"], "--phase", *clean["phase"], "--threads", "-1",
                            "--out", str(tmp_path / "bad")], capsys)
    assert code == EXIT_INPUT and "threads must be a whole number" in stderr
    assert not (tmp_path / "bad").exists()


def test_the_solvers_sums_do_not_follow_the_blas_thread_count():
    """CG and the ADMM stopping rules sum with ``_backend.dot`` / ``norm``; BLAS splits long sums among its
    threads, which changed a cohort task's chi with its thread count on the CI machine."""
    rng = np.random.default_rng(7)
    size = 3_000_000  # BLAS threads sums above about 10 000 elements
    for dtype in (np.float64, np.float32, np.complex64):
        first = rng.standard_normal(size).astype(dtype)
        second = rng.standard_normal(size).astype(dtype)
        if np.iscomplexobj(first):
            first += 1j * rng.standard_normal(size).astype(np.float32)
            second -= 1j * rng.standard_normal(size).astype(np.float32)
        results = []
        for threads in (1, 2):
            with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                results.append((_backend.dot(first, second), _backend.norm(first)))
        assert results[0] == results[1], dtype
        exact_dot = np.vdot(first.astype(np.complex128), second.astype(np.complex128)).real
        exact_norm = np.linalg.norm(first.astype(np.complex128))
        assert abs(results[0][0] - exact_dot) < 1e-5 * exact_norm * np.linalg.norm(second), dtype
        assert abs(results[0][1] / exact_norm - 1) < 1e-6, dtype
