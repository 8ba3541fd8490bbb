"""MultiEchoGRE validation: every violation is a QSMInputError that says what to do."""

import warnings

import numpy as np
import pytest

from QSMLib.acquisition import MultiEchoGRE, b0_direction_from_affine
from QSMLib.errors import QSMInputError, QSMWarning


def _data(echoes=3, shape=(8, 9, 10), seed=0):
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.5, 1.0, (echoes, *shape))
    phase = rng.uniform(-np.pi, np.pi, (echoes, *shape))
    return magnitude, phase


def test_valid_acquisition_is_normalised():
    magnitude, phase = _data()
    acquisition = MultiEchoGRE(magnitude, phase, [0.004, 0.008, 0.012], 3.0, voxel_size_mm=(1, 1, 2))
    assert acquisition.magnitude.dtype == np.float32 and acquisition.phase.dtype == np.float32
    assert acquisition.n_echoes == 3 and acquisition.spatial_shape == (8, 9, 10)
    assert acquisition.b0_direction == (0.0, 0.0, 1.0)
    np.testing.assert_allclose(acquisition.affine, np.diag([1, 1, 2, 1]))
    assert not acquisition.invalid_voxels.any()
    # The caller's arrays are copied, not modified.
    assert acquisition.magnitude is not magnitude


def test_single_3d_echo_is_accepted():
    magnitude, phase = _data(echoes=1)
    acquisition = MultiEchoGRE(magnitude[0], phase[0], [0.01], 3.0, voxel_size_mm=(1, 1, 1))
    assert acquisition.magnitude.shape == (1, 8, 9, 10)


def test_geometry_from_oblique_affine():
    tilt = np.deg2rad(20.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.5, 0.5, 2.0])
    magnitude, phase = _data()
    acquisition = MultiEchoGRE(magnitude, phase, [0.004, 0.008, 0.012], 3.0, affine=affine)
    np.testing.assert_allclose(acquisition.voxel_size_mm, (0.5, 0.5, 2.0))
    # b = M^T z: the bore axis seen from the array's axes.
    np.testing.assert_allclose(acquisition.b0_direction, (0.0, np.sin(tilt), np.cos(tilt)), atol=1e-12)
    np.testing.assert_allclose(b0_direction_from_affine(affine), acquisition.b0_direction)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(phase=np.zeros((3, 8, 9, 11))), "must match"),
        (dict(echo_times_s=[0.004, 0.008]), "2 echo time"),
        (dict(echo_times_s=[0.004, 0.012, 0.008]), "strictly increasing"),
        (dict(echo_times_s=[0.004, 0.004, 0.008]), "strictly increasing"),
        (dict(echo_times_s=[-0.004, 0.004, 0.008]), "positive"),
        (dict(echo_times_s=[4.0, 8.0, 12.0]), "milliseconds"),
        (dict(b0_tesla=3000.0), "tesla"),
        (dict(magnitude=np.ones((8, 9)), phase=np.ones((8, 9))), "must be 3D"),
        (dict(magnitude=np.ones((3, 2, 8, 9, 10)), phase=np.ones((3, 2, 8, 9, 10))), "coil"),
        (dict(phase=np.full((3, 8, 9, 10), 0.5)), "constant"),
        (dict(magnitude=np.zeros((3, 8, 9, 10))), "zero everywhere"),
        (dict(phase=np.full((3, 8, 9, 10), np.nan)), "non-finite"),
        (dict(voxel_size_mm=(1, 0, 1)), "Voxel size"),
        (dict(phase_sign=2), "phase_sign"),
        (dict(phase=np.ones((3, 8, 9, 10)) * 1j), "complex"),
    ],
)
def test_invalid_input_is_explained(change, message):
    magnitude, phase = _data()
    arguments = dict(magnitude=magnitude, phase=phase, echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0,
                     voxel_size_mm=(1, 1, 1))
    arguments.update(change)
    with pytest.raises(QSMInputError, match=message):
        MultiEchoGRE(**arguments)


def test_non_finite_voxels_are_excluded_and_counted():
    magnitude, phase = _data()
    phase[1, 2, 3, 4] = np.nan
    magnitude[0, 5, 5, 5] = np.inf
    with pytest.warns(QSMWarning, match="2 voxel"):
        acquisition = MultiEchoGRE(magnitude, phase, [0.004, 0.008, 0.012], 3.0, voxel_size_mm=(1, 1, 1))
    assert acquisition.invalid_voxels.sum() == 2
    assert acquisition.invalid_voxels[2, 3, 4] and acquisition.invalid_voxels[5, 5, 5]
    assert np.all(np.isfinite(acquisition.phase)) and np.all(np.isfinite(acquisition.magnitude))


def test_finite_input_gives_no_warning():
    magnitude, phase = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiEchoGRE(magnitude, phase, [0.004, 0.008, 0.012], 3.0, voxel_size_mm=(1, 1, 1))
