"""Small synthetic acquisitions written as NIfTI files, shared by the tests."""

import json
from pathlib import Path

import numpy as np
import pytest

from QSMLib.dipole import forward_field
from QSMLib.io.nifti import write_volume
from QSMLib.units import ppm_to_hz

#: Real scanner data kept in the repository (see Testing/data/README.md for source and licence).
TEST_DATA = Path(__file__).resolve().parent / "data"
ECHO_TIMES_S = (0.004, 0.008, 0.012)


def toy_head(shape=(40, 48, 36), voxel_mm=(4.0, 4.0, 4.0), seed=0):
    """An ellipsoidal 'head' with one paramagnetic blob; fields by dipole convolution.

    Small and quick: for testing mechanics (files, CLI, geometry), not accuracy.
    """
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    semi_axes_mm = np.array([70.0, 85.0, 60.0])
    radius = np.sqrt(sum(((grid[a] - centre[a]) * voxel_mm[a] / semi_axes_mm[a]) ** 2 for a in range(3)))
    head, brain = radius < 1.0, radius < 0.8
    chi = np.where(head, -9.4, 0.0).astype(np.float32)
    blob = sum(((grid[a] - centre[a] - 2) * voxel_mm[a]) ** 2 for a in range(3)) < 12.0**2
    chi[blob & brain] += 0.2
    field_hz = ppm_to_hz(forward_field(chi, voxel_mm), 3.0)
    times = np.array(ECHO_TIMES_S).reshape(-1, 1, 1, 1)
    rng = np.random.default_rng(seed)
    signal = np.where(head, 1.0, 0.0) * np.exp(-times * 25.0) * np.exp(2j * np.pi * field_hz * times)
    signal = signal + 0.01 * (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape))
    return np.abs(signal).astype(np.float32), np.angle(signal).astype(np.float32), brain, field_hz


def write_acquisition(folder, magnitude, phase, affine, *, sidecars=True, b0=3.0):
    """Write per-echo magnitude/phase NIfTI files (+ BIDS sidecars); returns the file lists."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"mag": [], "phase": []}
    for echo in range(magnitude.shape[0]):
        for role, data in (("mag", magnitude), ("phase", phase)):
            path = write_volume(folder / f"{role}_echo-{echo + 1}.nii.gz", data[echo], affine)
            if sidecars:
                (folder / f"{role}_echo-{echo + 1}.json").write_text(
                    json.dumps({"EchoTime": ECHO_TIMES_S[echo], "MagneticFieldStrength": b0}))
            files[role].append(str(path))
    return files


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory):
    """Per-echo NIfTI files with BIDS sidecars of an oblique toy head, plus its brain mask and labels."""
    folder = tmp_path_factory.mktemp("toy")
    magnitude, phase, brain, field_hz = toy_head()
    tilt = np.deg2rad(15.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]) * 4.0
    affine[:3, 3] = (-80.0, -96.0, -72.0)
    files = write_acquisition(folder / "in", magnitude, phase, affine)
    files["mask"] = str(write_volume(folder / "mask.nii.gz", brain.astype(np.uint8), affine))
    labels = np.zeros(brain.shape, np.int16)
    labels[brain] = 1
    labels[18:24, 22:28, 16:22] = 2
    files["labels"] = str(write_volume(folder / "labels.nii.gz", labels, affine))
    (folder / "labels.tsv").write_text("index\tname\n1\tbrain\n2\tblob\n")
    files["total_field"] = str(write_volume(folder / "total_field_hz.nii.gz", np.where(brain, field_hz, 0), affine))
    files["affine"] = affine
    files["folder"] = folder
    return files
