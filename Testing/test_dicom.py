"""``qsm dicom2bids``: DICOM written from the phantom (Siemens integer phase, GE real/imaginary)
converts to BIDS files whose chi equals the NIfTI path's."""

import json
import shutil
import sys

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from QSMLib.cli import EXIT_INPUT, EXIT_OK, EXIT_SOME_FAILED, main
from QSMLib.errors import QSMInputError
from QSMLib.io.dicom import _phase_to_radians, correct_slice_chopping, dicom_to_bids
from QSMLib.io.nifti import read_volume, write_volume
from QSMLib.phantom import simulate_head

ECHO_TIMES_MS = (4.0, 8.0, 12.0)
IMAGING_FREQUENCY_MHZ = "127.7324"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _header(patient, study, frame, series_uid, series_number, description, protocol="gre_qsm", **fields):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = patient, study, frame
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
    ds.Modality, ds.ProtocolName, ds.MagneticFieldStrength = "MR", protocol, 3
    ds.ImagingFrequency = IMAGING_FREQUENCY_MHZ
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def _ds(value):
    return f"{value:.6f}"


def write_series(folder, volumes, affine, *, part_type, series_number, echo_times_ms=ECHO_TIMES_MS,
                 manufacturer="SIEMENS", uids=None, protocol="gre_qsm", pixel=None):
    """Axial DICOM slices of (echo, a0, a1, a2) volumes on a RAS ``affine``, one file per slice.

    As a scanner stores a head whose array axes run right, anterior, superior: columns run to the
    patient's left (-a0), rows to posterior (-a1), slices upwards (a2).
    """
    patient, study, frame = uids or ("PHANTOM-7", generate_uid(), generate_uid())
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_direction, column_direction = -lps[:3, 0] / spacing[0], -lps[:3, 1] / spacing[1]
    series_uid = generate_uid()
    n0, n1, n2 = volumes.shape[1:]
    folder.mkdir(parents=True, exist_ok=True)
    pixel = pixel or {"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0}
    for echo, echo_time in enumerate(echo_times_ms):
        for k in range(n2):
            position = lps @ np.array([n0 - 1, n1 - 1, k, 1.0])
            ds = _header(patient, study, frame, series_uid, series_number, f"gre {part_type}", protocol,
                         Manufacturer=manufacturer, EchoTime=_ds(echo_time), EchoNumbers=echo + 1,
                         InstanceNumber=echo * n2 + k + 1, Rows=n1, Columns=n0,
                         ImageOrientationPatient=[f"{v:.8f}" for v in (*row_direction, *column_direction)],
                         ImagePositionPatient=[_ds(v) for v in position[:3]],
                         PixelSpacing=[_ds(spacing[1]), _ds(spacing[0])], SliceThickness=_ds(spacing[2]),
                         **pixel)
            if part_type in ("real", "imag"):
                ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
                block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
                block.add_new(0x2F, "SS", 2 if part_type == "real" else 3)
            else:
                ds.ImageType = ["ORIGINAL", "PRIMARY", part_type, "ND"]
                if part_type == "P":
                    ds.RescaleSlope, ds.RescaleIntercept = "2", "-4096"
            image = volumes[echo, ::-1, ::-1, k].T  # image[row, column] = volume[n0-1-column, n1-1-row, k]
            dtype = np.int16 if ds.PixelRepresentation else np.uint16
            ds.PixelData = np.ascontiguousarray(image).astype(dtype).tobytes()
            ds.save_as(folder / f"{series_number}_{echo + 1}_{k:03d}.dcm", enforce_file_format=True)


def siemens_integers(acquisition):
    """Magnitude as 12-bit integers and phase as Siemens stores it: 0..4095 with slope 2, intercept -4096."""
    magnitude = np.round(acquisition.magnitude * (4000.0 / acquisition.magnitude.max()))
    stored_phase = np.mod(np.round((acquisition.phase + np.pi) * (4096 / (2 * np.pi))), 4096)
    return magnitude, stored_phase


def dicom_order(volume):
    """(..., a0, a1, a2) -> (..., slice, row, column) as :func:`write_series` stores the slices."""
    flipped = volume[..., ::-1, ::-1, :]
    return np.moveaxis(flipped, (-3, -2, -1), (-1, -2, -3))


def dicom_affine(affine, shape):
    """The RAS affine of :func:`dicom_order`'s arrays: index (k, r, c) is voxel (n0-1-c, n1-1-r, k)."""
    n0, n1, _ = shape
    to_phantom = np.array([[0, 0, -1, n0 - 1], [0, -1, 0, n1 - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    return affine @ to_phantom


def write_nifti_reference(folder, magnitude, stored_phase, affine):
    """The same quantised data as BIDS NIfTI with sidecars: the NIfTI path of the comparison.

    The arrays are in the DICOM's slice/row/column order, so both paths run the pipeline on the same
    array layout (chi of oblique data depends on it by ~0.01 ppm, through the kernel's Nyquist planes).
    """
    folder.mkdir(parents=True)
    files = {"mag": [], "phase": []}
    radians = ((2 * stored_phase - 4096) * np.pi / 4096).astype(np.float32)
    reference_affine = dicom_affine(affine, magnitude.shape[1:])
    for echo, echo_time in enumerate(ECHO_TIMES_MS):
        for part, volume in (("mag", magnitude), ("phase", radians)):
            path = write_volume(folder / f"echo-{echo + 1}_part-{part}.nii.gz",
                                dicom_order(volume[echo]).astype(np.float32), reference_affine)
            (folder / f"echo-{echo + 1}_part-{part}.json").write_text(json.dumps({
                "EchoTime": echo_time / 1000, "ImagingFrequency": float(IMAGING_FREQUENCY_MHZ)}))
            files[part].append(str(path))
    return files


def run_qsm(files, out):
    code = main(["run", "--mag", *files["mag"], "--phase", *files["phase"], "--config", "fast", "--out", str(out),
                 "--progress", "none"])
    assert code == EXIT_OK
    return read_volume(out / "chi.nii.gz")


@pytest.mark.parametrize("oblique_deg", [0.0, 20.0])
def test_siemens_dicom_round_trips_to_the_chi_of_the_nifti_path(tmp_path, oblique_deg):
    phantom = simulate_head(voxel_size_mm=(4, 4, 4), fov_mm=(160, 192, 168),
                            echo_times_s=[t / 1000 for t in ECHO_TIMES_MS], oblique_deg=oblique_deg)
    acquisition = phantom.acquisition
    magnitude, stored_phase = siemens_integers(acquisition)
    uids = ("PHANTOM-7", generate_uid(), generate_uid())
    write_series(tmp_path / "dicom" / "mag", magnitude, acquisition.affine, part_type="M", series_number=5,
                 uids=uids)
    write_series(tmp_path / "dicom" / "phase", stored_phase, acquisition.affine, part_type="P", series_number=6,
                 uids=uids)
    write_series(tmp_path / "dicom" / "t1", magnitude[:1], acquisition.affine, part_type="M", series_number=2,
                 echo_times_ms=(2.5,), uids=uids, protocol="t1_mprage")
    (tmp_path / "dicom" / "README.txt").write_text("not DICOM")

    code = main(["dicom2bids", str(tmp_path / "dicom"), str(tmp_path / "bids"), "--progress", "none"])
    assert code == EXIT_OK
    anat = tmp_path / "bids" / "sub-PHANTOM7" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert names == sorted(f"sub-PHANTOM7_echo-{e}_part-{p}_MEGRE.{x}" for e in (1, 2, 3) for p in ("mag", "phase")
                           for x in ("json", "nii.gz"))
    assert json.loads((tmp_path / "bids" / "dataset_description.json").read_text())["DatasetType"] == "raw"
    sidecar = json.loads((anat / "sub-PHANTOM7_echo-2_part-phase_MEGRE.json").read_text())
    assert sidecar["EchoTime"] == 0.008 and sidecar["EchoNumber"] == 2 and sidecar["Units"] == "rad"
    assert sidecar["ImagingFrequency"] == float(IMAGING_FREQUENCY_MHZ) and sidecar["MagneticFieldStrength"] == 3
    assert sidecar["Manufacturer"] == "SIEMENS" and len(sidecar["ImageOrientationPatientDICOM"]) == 6
    assert "8192" in sidecar["PhaseScaling"] and "12-bit" in sidecar["PhaseScaling"]

    reference = write_nifti_reference(tmp_path / "nifti", magnitude, stored_phase, acquisition.affine)
    for part in ("mag", "phase"):
        converted, converted_affine = read_volume(anat / f"sub-PHANTOM7_echo-2_part-{part}_MEGRE.nii.gz")
        expected, expected_affine = read_volume(reference[part][1])
        assert np.allclose(converted_affine, expected_affine, atol=1e-4)  # same voxels, same world positions
        assert np.abs(converted - expected).max() < 1e-5  # radians; magnitude exactly

    converted = {part: [str(anat / f"sub-PHANTOM7_echo-{e}_part-{part}_MEGRE.nii.gz") for e in (1, 2, 3)]
                 for part in ("mag", "phase")}
    chi_dicom, _ = run_qsm(converted, tmp_path / "from_dicom")
    chi_nifti, _ = run_qsm(reference, tmp_path / "from_nifti")
    assert np.array_equal(chi_dicom != 0, chi_nifti != 0)
    # ppm; iron-rich nuclei are ~0.1. Measured 0.06-0.13 ppb: the phases differ by the conversion's rounding
    # (< 1e-5 rad), which MERIT's reweighting in the single-step TV of `fast` carries into chi
    assert np.abs(chi_dicom - chi_nifti).max() < 5e-4


def test_ge_real_imaginary_with_slice_chopping_becomes_magnitude_and_phase(tmp_path):
    phantom = simulate_head(voxel_size_mm=(8, 8, 8), fov_mm=(160, 192, 168), echo_times_s=(0.004, 0.008))
    acquisition = phantom.acquisition
    signal = acquisition.magnitude * np.exp(1j * acquisition.phase)
    signal = signal * (1800.0 / np.abs(signal).max())
    chopped = signal.copy()
    chopped[:, :, :, 1::2] *= -1  # every other axial slice (array axis 2) negated
    uids = ("GE-1", generate_uid(), generate_uid())
    signed = {"BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1}
    for part, values, number in (("real", chopped.real, 7), ("imag", chopped.imag, 8)):
        write_series(tmp_path / "dicom" / part, np.round(values), acquisition.affine, part_type=part,
                     series_number=number, echo_times_ms=(4.0, 8.0), manufacturer="GE MEDICAL SYSTEMS", uids=uids,
                     pixel=signed)
    conversion = dicom_to_bids(tmp_path / "dicom", tmp_path / "bids", subject="ge", session="one")
    assert not conversion.failed and len(conversion.runs) == 1
    run = conversion.runs[0]
    assert run["name"] == "sub-ge_ses-one" and run["n_echoes"] == 2 and run["echo_times_s"] == [0.004, 0.008]
    assert any("chopping" in note for note in run["notes"]) and any("--phase-sign -1" in n for n in run["notes"])
    anat = tmp_path / "bids" / "sub-ge" / "ses-one" / "anat"
    phase, phase_affine = read_volume(anat / "sub-ge_ses-one_echo-2_part-phase_MEGRE.nii.gz")
    magnitude, _ = read_volume(anat / "sub-ge_ses-one_echo-2_part-mag_MEGRE.nii.gz")
    assert np.allclose(phase_affine, dicom_affine(acquisition.affine, acquisition.spatial_shape), atol=1e-4)
    expected = dicom_order(np.round(signal[1].real) + 1j * np.round(signal[1].imag))
    bright = np.abs(expected) > 100
    assert np.abs(np.angle(np.exp(1j * (phase - np.angle(expected)))))[bright].max() < 1e-4
    assert np.allclose(magnitude, np.abs(expected), rtol=1e-5, atol=1e-3)


def test_incomplete_and_duplicated_series_are_reported(tmp_path):
    phantom = simulate_head(voxel_size_mm=(8, 8, 8), fov_mm=(160, 192, 168), echo_times_s=(0.004, 0.008, 0.012))
    magnitude, stored_phase = siemens_integers(phantom.acquisition)
    uids = ("P-2", generate_uid(), generate_uid())
    write_series(tmp_path / "gap" / "mag", magnitude, phantom.acquisition.affine, part_type="M", series_number=3,
                 uids=uids)
    write_series(tmp_path / "gap" / "phase", stored_phase, phantom.acquisition.affine, part_type="P",
                 series_number=4, uids=uids)
    shutil.copytree(tmp_path / "gap", tmp_path / "twice" / "first")
    shutil.copytree(tmp_path / "gap", tmp_path / "twice" / "second")
    (tmp_path / "gap" / "phase" / "4_2_010.dcm").unlink()

    code = main(["dicom2bids", str(tmp_path / "gap"), str(tmp_path / "bids"), "--progress", "none"])
    assert code == EXIT_SOME_FAILED
    conversion = dicom_to_bids(tmp_path / "twice", tmp_path / "bids2")
    assert not conversion.runs and "two acquisitions with the same geometry" in conversion.failed[0]["reason"]
    assert main(["dicom2bids", str(tmp_path / "bids2"), str(tmp_path / "bids3"), "--progress", "none"]) == EXIT_INPUT


def test_phase_scaling_follows_the_header():
    radians, rule = _phase_to_radians(np.array([-3.1, 0.25, 3.0]), {})
    assert rule == "radians as stored" and np.allclose(radians, [-3.1, 0.25, 3.0])
    signed = np.array([-2048.0, 0.0, 1024.0, 2047.0])
    radians, rule = _phase_to_radians(signed, {"BitsStored": 12, "PixelRepresentation": 1})
    assert np.allclose(radians, signed * np.pi / 2048) and "4096" in rule
    siemens = np.array([-4096.0, 0.0, 4094.0])
    radians, _ = _phase_to_radians(siemens, {"BitsStored": 12, "RescaleSlope": 2, "RescaleIntercept": -4096})
    assert np.allclose(radians, siemens * np.pi / 4096)
    with pytest.raises(QSMInputError, match="outside the stored range"):
        _phase_to_radians(np.array([0.0, 5000.0]), {"BitsStored": 12})


def test_slice_chopping_is_detected_only_when_present():
    rng = np.random.default_rng(0)
    smooth = np.exp(1j * np.linspace(0, 1, 8))[None, :, None, None] * (1 + rng.random((2, 8, 5, 5)))
    unchanged, chopped = correct_slice_chopping(smooth)
    assert not chopped and unchanged is smooth
    flipped = smooth.copy()
    flipped[:, 1::2] *= -1
    restored, chopped = correct_slice_chopping(flipped)
    assert chopped and np.allclose(restored, smooth)


def test_missing_pydicom_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(QSMInputError, match=r'pip install "qsmlib\[cohort\]"'):
        dicom_to_bids(tmp_path, tmp_path / "bids")
