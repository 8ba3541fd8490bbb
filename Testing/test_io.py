"""File I/O: phase scaling, geometry round trips, sidecars, NaN handling."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import TEST_DATA

from QSMLib.errors import QSMInputError, QSMWarning
from QSMLib.io.nifti import load_acquisition, read_volume, write_volume
from QSMLib.phase.scaling import detect_phase_scale, phase_to_radians
from QSMLib.units import GAMMA_BAR_HZ_PER_T

DATA = TEST_DATA / "invivo_3echo_crop"


@pytest.fixture
def true_phase():
    rng = np.random.default_rng(1)
    return rng.uniform(-np.pi, np.pi, 5000)


def _circular_error(a, b):
    return np.abs(np.angle(np.exp(1j * (a - b)))).max()


@pytest.mark.parametrize(
    "encode, expected",
    [
        (lambda p: p, "radians"),
        (lambda p: p + np.pi, "radians"),
        (lambda p: np.rad2deg(p), "degrees"),
        (lambda p: np.round((p + np.pi) / (2 * np.pi) * 8192 - 4096), "integer"),
        (lambda p: np.round((p + np.pi) / (2 * np.pi) * 4096), "integer"),
        (lambda p: p * (0.00367 / np.pi), "range"),
        (lambda p: p * (2048.5 / np.pi), "range"),
    ],
    ids=["radians", "radians-0-2pi", "degrees", "int-4096", "int-0-4095", "scaled-0.00367", "scaled-2048"],
)
def test_phase_scaling_recovers_radians(true_phase, encode, expected):
    raw = encode(true_phase)
    assert detect_phase_scale(raw) == expected
    radians, applied = phase_to_radians(raw)
    assert applied == expected
    assert radians.min() >= -np.pi and radians.max() < np.pi
    # Integer encodings quantise to 2pi/8192 or 2pi/4096; a scaled range is
    # calibrated from the observed extremes (here 5000 samples); the rest is exact.
    tolerance = {"integer": 2 * np.pi / 4096, "range": 5e-3}.get(expected, 1e-5)
    offset = np.angle(np.mean(np.exp(1j * (radians - true_phase))))
    assert _circular_error(radians - offset, true_phase) <= tolerance


def test_integer_phase_files_use_the_stored_range_not_the_observed_extremes(tmp_path):
    # 12-bit signed phase (v * pi / 4096) of a volume whose phase stays within [-2.5, 2.0] rad:
    # scaling from the observed extremes would stretch it onto [-pi, pi) (up to 0.64 rad off here).
    rng = np.random.default_rng(3)
    true_phase = rng.uniform(-2.5, 2.0, (2, 6, 7, 5))
    stored = np.round(true_phase * 4096 / np.pi).astype(np.int16)
    magnitude = np.full(stored.shape, 100.0, dtype=np.float32)
    mag_files = [write_volume(tmp_path / f"mag{echo}.nii.gz", magnitude[echo], np.eye(4)) for echo in range(2)]
    phase_files = [write_volume(tmp_path / f"phase{echo}.nii.gz", stored[echo], np.eye(4)) for echo in range(2)]
    acquisition, _ = load_acquisition(mag_files, phase_files, echo_times_s=[0.005, 0.010], b0_tesla=3.0)
    np.testing.assert_allclose(acquisition.phase, stored * np.pi / 4096, atol=1e-6)


@pytest.mark.parametrize("raw", [np.linspace(0.2, 7.1, 100), np.linspace(-4.7, 4.7, 100)])
def test_ambiguous_phase_range_is_refused_with_advice(raw):
    with pytest.raises(QSMInputError, match="--phase-scale"):
        detect_phase_scale(raw)


def test_explicit_scale_overrides_detection():
    raw = np.linspace(-4.7, 4.7, 100)
    radians, applied = phase_to_radians(raw, "radians")
    assert applied == "radians"
    np.testing.assert_allclose(np.exp(1j * radians), np.exp(1j * raw), atol=1e-5)


def _oblique_affine(tilt_deg=20.0, voxel=(0.8, 1.0, 2.0)):
    t = np.deg2rad(tilt_deg)
    rotation = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel)
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    return affine


def test_volume_round_trip_keeps_values_and_geometry(tmp_path):
    affine = _oblique_affine()
    volume = np.random.default_rng(0).standard_normal((6, 7, 8)).astype(np.float32)
    path = write_volume(tmp_path / "v.nii.gz", volume, affine)
    back, back_affine = read_volume(path)
    np.testing.assert_array_equal(back, volume)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    # Nothing but the file itself is left behind (the write is atomic via rename).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]


def test_geometry_matches_simpleitk_physical_points(tmp_path):
    affine = _oblique_affine()
    path = write_volume(tmp_path / "v.nii.gz", np.zeros((6, 7, 8), np.float32), affine)
    image = sitk.ReadImage(str(path))
    for index_ijk in [(0, 0, 0), (7, 0, 0), (0, 6, 0), (3, 2, 5)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index_ijk))
        ras = affine @ np.array([index_ijk[2], index_ijk[1], index_ijk[0], 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


def _write_series(folder, magnitude, phase, affine, sidecars):
    magnitude_files, phase_files = [], []
    for echo in range(magnitude.shape[0]):
        for role, data, files in (("mag", magnitude, magnitude_files), ("phase", phase, phase_files)):
            path = write_volume(folder / f"{role}_echo-{echo + 1}.nii.gz", data[echo], affine)
            if sidecars is not None:
                (folder / f"{role}_echo-{echo + 1}.json").write_text(json.dumps(sidecars[echo]))
            files.append(path)
    return magnitude_files, phase_files


@pytest.fixture
def series(tmp_path):
    rng = np.random.default_rng(2)
    magnitude = rng.uniform(1, 2, (3, 6, 7, 8)).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, (3, 6, 7, 8)).astype(np.float32)
    return magnitude, phase, _oblique_affine()


def test_sidecars_give_echo_times_and_imaging_frequency_wins(tmp_path, series):
    magnitude, phase, affine = series
    sidecars = [{"EchoTime": te, "MagneticFieldStrength": 3, "ImagingFrequency": 123.2} for te in (0.004, 0.008, 0.012)]
    magnitude_files, phase_files = _write_series(tmp_path, magnitude, phase, affine, sidecars)
    acquisition, info = load_acquisition(magnitude_files, phase_files)
    assert acquisition.echo_times_s == (0.004, 0.008, 0.012)
    assert acquisition.b0_tesla == pytest.approx(123.2e6 / GAMMA_BAR_HZ_PER_T)
    assert info["b0_source"] == "ImagingFrequency" and info["phase_scale"] == "radians"
    np.testing.assert_allclose(acquisition.affine, affine, atol=1e-5)
    np.testing.assert_allclose(acquisition.phase, phase, atol=1e-6)
    assert np.allclose(np.linalg.norm(acquisition.b0_direction), 1.0)


def test_arguments_override_sidecars(tmp_path, series):
    magnitude, phase, affine = series
    sidecars = [{"EchoTime": te, "MagneticFieldStrength": 3} for te in (0.004, 0.008, 0.012)]
    magnitude_files, phase_files = _write_series(tmp_path, magnitude, phase, affine, sidecars)
    acquisition, info = load_acquisition(magnitude_files, phase_files, echo_times_s=[0.005, 0.010, 0.015],
                                         b0_tesla=7.0)
    assert acquisition.echo_times_s == (0.005, 0.010, 0.015) and acquisition.b0_tesla == 7.0
    assert info["echo_times_source"] == "argument"


def test_missing_echo_times_everywhere_is_an_error(tmp_path, series):
    magnitude, phase, affine = series
    magnitude_files, phase_files = _write_series(tmp_path, magnitude, phase, affine, None)
    with pytest.raises(QSMInputError, match="No echo times"):
        load_acquisition(magnitude_files, phase_files, b0_tesla=3)
    with pytest.raises(QSMInputError, match="No field strength"):
        load_acquisition(magnitude_files, phase_files, echo_times_s=[0.004, 0.008, 0.012])


def test_mismatched_echo_grids_are_an_error(tmp_path, series):
    magnitude, phase, affine = series
    magnitude_files, phase_files = _write_series(tmp_path, magnitude, phase, affine, None)
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    write_volume(phase_files[1], phase[1], shifted)
    with pytest.raises(QSMInputError, match="same voxel grid"):
        load_acquisition(magnitude_files, phase_files, echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3)


def test_in_vivo_crop_scaling_and_geometry():
    acquisition, info = load_acquisition([DATA / "mag.nii.gz"], [DATA / "phase.nii.gz"],
                                         echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0)
    assert info["phase_scale"] == "range"
    assert acquisition.spatial_shape == (41, 51, 51)
    np.testing.assert_allclose(acquisition.voxel_size_mm, (1.0, 0.46875, 0.46875))
    # Phase now fills [-pi, pi): the +-0.00367 storage range was mapped onto 2 pi.
    assert acquisition.phase.min() < -3.1 and acquisition.phase.max() > 3.1


def test_nan_voxels_survive_reading_and_are_reported():
    # SimpleITK alone reads NaN as 0; read_volume restores them from the file.
    raw, _ = read_volume(DATA / "phase_with_nan_2echo.nii.gz")
    assert np.isnan(raw).sum() == 1280
    magnitude = np.ones(raw.shape, np.float32)
    from QSMLib.acquisition import MultiEchoGRE

    radians, _ = phase_to_radians(raw, "radians")
    with pytest.warns(QSMWarning, match="voxel"):
        acquisition = MultiEchoGRE(magnitude, radians, [0.004, 0.008], 3.0, voxel_size_mm=(1, 1, 1))
    assert acquisition.invalid_voxels.sum() == np.any(np.isnan(raw), axis=0).sum() > 0


def test_nan_file_phase_range_is_ambiguous():
    with pytest.raises(QSMInputError, match="Cannot tell how this phase is scaled"):
        load_acquisition([DATA / "phase_with_nan_2echo.nii.gz"], [DATA / "phase_with_nan_2echo.nii.gz"],
                         echo_times_s=[0.004, 0.008], b0_tesla=3.0)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = write_volume(tmp_path / "v.nii.gz", np.ones((20, 20, 20), np.float32), np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QSMInputError, match="corrupt or truncated|Cannot read"):
        read_volume(path)


def test_float32_radians_are_kept_exactly_as_the_double_precision_wrap_gives_them():
    rng = np.random.default_rng(0)
    raw = rng.uniform(-np.pi, np.pi, 200_000).astype(np.float32)
    raw[:1000] = rng.uniform(-1e-7, 1e-7, 1000)  # near 0, where adding pi in double loses bits
    raw[1000:1020] = [np.float32(-np.pi), np.float32(np.pi), 0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45,
                      3.1415925, 3.2, -3.2, 4.0, 2e-8, -2e-8, 1.9e-8, 3e-9, -3e-9, 1e-20, 7.0]
    with np.errstate(invalid="ignore"):
        expected = (np.mod(raw.astype(np.float64) + np.pi, 2 * np.pi) - np.pi).astype(np.float32)
    for out in (None, "in place"):
        values = raw.copy()
        radians, scale = phase_to_radians(values, "radians", out=values if out else None)
        assert scale == "radians" and radians.dtype == np.float32 and (radians is values) == bool(out)
        np.testing.assert_array_equal(radians, expected)  # NaN where expected is NaN, every bit elsewhere
    assert not np.array_equal(expected[:1000], raw[:1000])  # the case is real: some tiny values do change
