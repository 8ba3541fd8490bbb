"""RESHARP and iSMV background removal on the numerical head phantom and on constructed fields.

The phantom (2 mm, simulated on a 1 mm grid, with its air-filled sinus) gives
the known local field; the field of its outside sources alone must vanish.
"""

import threading
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from QSMLib import metrics
from QSMLib.background.ismv import ismv
from QSMLib.background.resharp import resharp
from QSMLib.contract import BackgroundResult
from QSMLib.errors import QSMCancelled, QSMInputError
from QSMLib.inversion import tv
from QSMLib.phantom import simulate_head

METHODS = {"resharp": resharp, "ismv": ismv}


@pytest.fixture(scope="module")
def head():
    return simulate_head(voxel_size_mm=(2.0, 2.0, 2.0), snr=None, supersample=2)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_result_contract_and_eroded_valid_mask(head, method):
    result = METHODS[method](head.total_field_hz, head.brain_mask, head.acquisition.voxel_size_mm)
    assert isinstance(result, BackgroundResult)
    assert result.local_field_hz.dtype == np.float32 and result.mask.dtype == bool
    assert np.all(result.mask <= head.brain_mask) and np.all(result.local_field_hz[~result.mask] == 0)
    # eroded by the ball's radius (6 mm / 4 mm at 2 mm voxels), no more
    assert 0.7 * head.brain_mask.sum() < result.mask.sum() < 0.95 * head.brain_mask.sum()
    assert result.parameters["radius_mm"] > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_removes_the_field_of_outside_sources(head, method):
    """The background alone (air, bone, sinus, shim; hundreds of Hz) leaves < 0.05 Hz SD (local field SD ~1 Hz).

    Measured: iSMV and one-radius RESHARP 0.027, RESHARP with its three radii 0.049 (what its CG tolerance leaves).
    """
    result = METHODS[method](head.background_field_hz, head.brain_mask, head.acquisition.voxel_size_mm)
    assert result.local_field_hz[result.mask].std() < {"resharp": 0.055}.get(method, 0.05)


#: Local-field NRMSE (%) and chi correlation after TV, 2 mm phantom: measured RESHARP 56.9 / 0.82 with its three
#: radii (one radius 53.2 / 0.85: on this piecewise-constant phantom, unlike the validation suite's heads, the
#: larger balls do not help; 59.7 / 0.81 when its CG stopped at a residual of 1e-2 with lambda 1e-3), iSMV 82.4 /
#: 0.64 (V-SHARP 96, PDF 63, LBV 72 in test_background_methods.py).
@pytest.mark.parametrize("method, limit, correlation", [("resharp", 59.0, 0.80), ("ismv", 86.0, 0.6)])
def test_local_field_against_truth_on_the_phantom_with_a_sinus(head, method, limit, correlation):
    acq = head.acquisition
    result = METHODS[method](head.total_field_hz, head.brain_mask, acq.voxel_size_mm)
    assert metrics.nrmse(result.local_field_hz, head.local_field_hz, result.mask) < limit
    chi = tv(result.local_field_hz, result.mask, acq.voxel_size_mm, b0_direction=acq.b0_direction,
             b0_tesla=acq.b0_tesla, regularization=2e-4).chi_ppm
    assert metrics.correlation(chi, head.chi_ppm, result.mask) > correlation


def test_ismv_recovers_a_local_source_inside_a_harmonic_background():
    """A ball of susceptibility (analytic field: zero inside, dipolar outside) under a quadratic harmonic field."""
    shape, voxel = (48, 48, 48), (1.0, 1.0, 1.0)
    grid = np.indices(shape).astype(np.float32) - 23.5
    radius2 = (grid**2).sum(axis=0)
    mask = radius2 < 21**2
    r = np.sqrt(np.maximum(radius2, 1e-6))
    cos2 = grid[2] ** 2 / np.maximum(radius2, 1e-6)
    # ball of radius 4, 10 Hz scale: outside field 10 (a^3 / 3 r^3)(3 cos^2 - 1), inside 0 (Lorentz corrected)
    local = np.where(r > 4, 10.0 * 4**3 / (3 * r**3) * (3 * cos2 - 1), 0.0).astype(np.float32)
    background = (0.05 * (grid[0] ** 2 - grid[1] ** 2) + 2.0 * grid[2] + 30.0).astype(np.float32)
    result = ismv(local + background, mask, voxel, radius_mm=3.0)
    assert metrics.nrmse(result.local_field_hz, local, result.mask) < 25.0


def test_spherical_mean_keeps_a_harmonic_field_on_anisotropic_voxels():
    """On 1 x 1 x 2 mm voxels the weighted ball's mean of x^2 - z^2 (harmonic) is the field itself, and
    iSMV leaves nothing of it as local field; a ball of whole voxels misses by (M_x - M_z) = 0.64 ppm mm^2."""
    from QSMLib import _fft
    from QSMLib._operators import sphere_kernel

    shape, voxel = (40, 40, 24), (1.0, 1.0, 2.0)
    grid = (np.indices(shape).astype(np.float64) - np.array([19.5, 19.5, 11.5])[:, None, None, None]) * np.array(
        voxel)[:, None, None, None]
    background = (0.05 * (grid[0] ** 2 - grid[2] ** 2)).astype(np.float32)
    kernel = sphere_kernel(shape, voxel, 4.0)
    mean = _fft.irfftn(_fft.rfftn(background) * kernel, shape)
    interior = (slice(8, 32), slice(8, 32), slice(6, 18))  # no ball wraps round the periodic edges
    assert np.abs(mean - background)[interior].max() < 1e-3  # plain ball: 0.05 x 0.64 = 0.032
    radius2 = (grid**2).sum(axis=0)
    result = ismv(background, radius2 < 18**2, voxel, radius_mm=4.0)
    assert np.abs(result.local_field_hz[result.mask]).max() < 0.05


@pytest.mark.parametrize("method", sorted(METHODS))
def test_progress_and_cancel_within_a_second(head, method):
    voxel = head.acquisition.voxel_size_mm
    reports = []
    METHODS[method](head.total_field_hz, head.brain_mask, voxel, progress=lambda f, m: reports.append(f))
    assert len(reports) >= 3 and reports == sorted(reports) and reports[-1] == 1.0
    cancel = threading.Event()
    requested = []

    def progress(fraction: float, message: str) -> None:
        if fraction > 0 and not cancel.is_set():
            requested.append(time.perf_counter())
            cancel.set()

    with pytest.raises(QSMCancelled):
        METHODS[method](head.total_field_hz, head.brain_mask, voxel, progress=progress, cancel=cancel)
    assert time.perf_counter() - requested[0] < 1.0


@pytest.mark.parametrize(
    "method, params",
    [("resharp", {"radius_mm": 0.0}), ("resharp", {"regularization": -1.0}), ("ismv", {"tolerance": 0.0}),
     ("ismv", {"radius_mm": 100.0}), ("resharp", {"max_iterations": 0}), ("resharp", {"radius_multiples": ()}),
     ("resharp", {"radius_multiples": (1.0, 0.0)}), ("resharp", {"radius_mm": 100.0})],
)
def test_bad_parameters_and_masks_are_refused(head, method, params):
    with pytest.raises(QSMInputError):
        METHODS[method](head.total_field_hz, head.brain_mask, head.acquisition.voxel_size_mm, **params)
    with pytest.raises(QSMInputError, match="empty"):
        METHODS[method](head.total_field_hz, np.zeros_like(head.brain_mask), head.acquisition.voxel_size_mm)


def test_resharp_keeps_the_smallest_balls_erosion_and_drops_balls_too_large_for_the_mask():
    """A mask of radius 9 mm: the 3 mm ball's interior is kept; the 10 mm ball fits nowhere, so 3 and 6 mm remain."""
    grid = np.indices((40, 40, 40)).astype(np.float32) - 19.5
    mask = (grid**2).sum(axis=0) < 9**2
    result = resharp(2.0 * grid[2], mask, (1.0, 1.0, 1.0))
    assert result.parameters["radii_mm"] == [3.0, 6.0]
    distance = ndi.distance_transform_edt(mask)
    assert np.all(result.mask <= mask) and np.all(result.mask[distance > 4])
    assert np.abs(result.local_field_hz[result.mask]).max() < 0.05
