"""Background field removal: V-SHARP, PDF and LBV.

On the numerical head phantom (with its air-filled sinus below the frontal
lobe, simulated on a finer grid) and on constructed fields with a known
answer. The phantom's local field has a large smooth part from the white
matter body that is harmonic-looking inside the brain, which no method can
tell from background, so the local-field NRMSE stays far above the
inversion's; the checks therefore compare with the truth both directly and
on what background removal must do exactly: remove fields of outside
sources.
"""

import threading

import numpy as np
import pytest

from QSMLib import metrics
from QSMLib.background import METHODS
from QSMLib.background.lbv import interior
from QSMLib.dipole import forward_field, unit_vector
from QSMLib.errors import QSMCancelled, QSMInputError
from QSMLib.inversion import tv
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PipelineConfig
from QSMLib.units import ppm_to_hz


@pytest.fixture(scope="module")
def head():
    return simulate_head(voxel_size_mm=(2.0, 2.0, 2.0), snr=None, supersample=2)


def _remove(method, field, mask, voxel_size_mm, b0_direction=(0.0, 0.0, 1.0), **params):
    """(local field, valid mask) of ``method``, given the pipeline inputs it declares."""
    entry = METHODS[method]
    inputs = {"b0_direction": b0_direction} if "b0_direction" in entry.inputs else {}
    result = entry(field, mask, voxel_size_mm, **inputs, **params)
    return result.local_field_hz, result.mask


@pytest.mark.parametrize("method", sorted(METHODS))
def test_contract_local_field_and_valid_mask(head, method):
    acq = head.acquisition
    local, valid = _remove(method, head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction)
    assert local.dtype == np.float32 and valid.dtype == bool and local.shape == valid.shape == head.brain_mask.shape
    assert np.all(valid <= head.brain_mask) and np.all(local[~valid] == 0)
    # the SMV methods lose a shell of their radius (iSMV 4 mm, RESHARP 6 mm at 2 mm voxels): measured 0.85, 0.77;
    # LBV erodes a brain mask by 4 mm: measured 0.79
    assert valid.sum() > {"ismv": 0.82, "resharp": 0.74, "lbv": 0.76}.get(method, 0.9) * head.brain_mask.sum()


@pytest.mark.parametrize("method, limit_hz", [("vsharp", 0.05), ("pdf", 0.15), ("lbv", 0.05)])
def test_removes_the_field_of_outside_sources(head, method, limit_hz):
    """The phantom's background (air, bone, sinus, shim) alone: almost nothing may remain (local SD ~ 1 Hz)."""
    acq = head.acquisition
    local, valid = _remove(method, head.background_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction)
    assert local[valid].std() < limit_hz


#: Local-field NRMSE (%) on the 2 mm phantom: measured V-SHARP 96, PDF 63, LBV 93. LBV erodes this brain mask by
#: 4 mm (its default for a user's mask), which costs on this phantom (72 % without erosion; deeper than 10 mm 94 %
#: against 72 %) while it gains on every one of the thirteen whole suite heads (145.3 -> 38.3 % mean), whose
#: anatomy is realistic (see the module docstring for this phantom's large smooth local field).
@pytest.mark.parametrize("method, limit", [("vsharp", 100.0), ("pdf", 70.0), ("lbv", 95.0)])
def test_local_field_against_truth_on_the_phantom_with_a_sinus(head, method, limit):
    acq = head.acquisition
    local, valid = _remove(method, head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction)
    assert metrics.nrmse(local, head.local_field_hz, valid) < limit
    chi = tv(local, valid, acq.voxel_size_mm, b0_direction=acq.b0_direction, b0_tesla=acq.b0_tesla).chi_ppm
    assert metrics.correlation(chi, head.chi_ppm, valid) > 0.4


def test_lbv_recovers_any_local_field_that_is_zero_off_the_interior():
    """f = l + h, h discretely harmonic, l arbitrary on the interior: LBV must return l (anisotropic voxels)."""
    voxel = (1.0, 1.3, 0.8)
    shape = (48, 40, 56)
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, voxel)], indexing="ij")
    mask = (x / 22) ** 2 + (y / 24) ** 2 + (z / 20) ** 2 + 0.15 * np.sin(x / 3) * np.cos(z / 4) <= 1
    # a x^2 + b y^2 + c z^2 with a + b + c = 0 is harmonic for the 7-point Laplacian too
    harmonic = (0.02 * x**2 - 0.05 * y**2 + 0.03 * z**2 + 0.4 * x - 0.2 * z + 3.0).astype(np.float32)
    rng = np.random.default_rng(0)
    local_truth = np.where(interior(mask), rng.standard_normal(shape), 0).astype(np.float32)
    local, valid = _remove("lbv", local_truth + harmonic, mask, voxel, tolerance=1e-6, erosion_mm=0.0)
    assert np.array_equal(valid, interior(mask))
    assert np.abs(local - local_truth).max() < 1e-3


def test_lbv_multigrid_keeps_iterations_few(head):
    acq = head.acquisition
    messages = []
    _remove("lbv", head.total_field_hz, head.brain_mask, acq.voxel_size_mm,
            progress=lambda fraction, message: messages.append(message))
    iterations = [int(m.split()[-1]) for m in messages if m.startswith("LBV iteration")]
    assert 0 < max(iterations) <= 20


def test_lbv_erodes_a_brain_mask_by_4_mm_and_the_pipelines_own_mask_not_at_all(head):
    acq = head.acquisition
    field, brain, voxel = head.total_field_hz, head.brain_mask, acq.voxel_size_mm
    automatic = METHODS["lbv"](field, brain, voxel, mask_source="automatic")
    assert np.array_equal(automatic.mask, interior(brain))
    assert automatic.parameters == {"erosion_mm": 0.0, "erosion_chosen_for": "automatic mask"}
    user = METHODS["lbv"](field, brain, voxel)
    assert user.parameters == {"erosion_mm": 4.0, "erosion_chosen_for": "user mask"}
    given = METHODS["lbv"](field, brain, voxel, erosion_mm=4.0, mask_source="automatic")
    assert given.parameters == {"erosion_mm": 4.0}
    assert np.array_equal(user.mask, given.mask) and np.array_equal(user.local_field_hz, given.local_field_hz)
    assert user.mask.sum() < automatic.mask.sum() and np.all(user.mask <= automatic.mask)


def test_lbv_erosion_protects_against_a_mask_that_reaches_bone(head):
    """Brain plus extracerebral CSF: the outer layer shares voxels with bone, whose field LBV would trust."""
    acq = head.acquisition
    generous = head.brain_mask | (head.labels == 20)
    errors = {}
    for erosion in (0.0, 2.0):
        local, valid = _remove("lbv", head.total_field_hz, generous, acq.voxel_size_mm, erosion_mm=erosion)
        errors[erosion] = metrics.nrmse(local, head.local_field_hz, valid & head.brain_mask)
    assert errors[2.0] < 0.3 * errors[0.0]


def test_pdf_needs_no_erosion_but_offers_it(head):
    acq = head.acquisition
    _, valid = _remove("pdf", head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction)
    assert np.array_equal(valid, head.brain_mask)
    _, eroded = _remove("pdf", head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction,
                        erosion_mm=4.0)
    assert eroded.sum() < valid.sum()


def test_pdf_uses_b0_direction_and_field_weight():
    """An oblique external air sphere next to an anisotropic-voxel mask; corrupted voxels weighted 0."""
    voxel = (1.5, 1.0, 2.0)
    shape = (48, 64, 36)
    b0 = tuple(unit_vector((0.0, np.sin(0.4), np.cos(0.4))))
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, voxel)], indexing="ij")
    mask = (x / 24) ** 2 + (y / 22) ** 2 + (z / 24) ** 2 <= 1
    air = (x**2 + (y - 28) ** 2 + (z + 20) ** 2) <= 8.0**2
    background = ppm_to_hz(forward_field(np.where(air, 9.4, 0).astype(np.float32), voxel, b0), 3.0)
    corrupted = background.copy()
    bad = mask & (np.abs(x + 5) < 3) & (np.abs(y) < 3) & (np.abs(z) < 4)
    corrupted[bad] += 30.0
    weight = np.where(bad, 0.0, 1.0).astype(np.float32)
    right, _ = _remove("pdf", corrupted, mask, voxel, b0, field_weight=weight)
    unweighted, _ = _remove("pdf", corrupted, mask, voxel, b0)
    wrong, _ = _remove("pdf", corrupted, mask, voxel, (0.0, 0.0, 1.0), field_weight=weight)
    good = mask & ~bad
    residual = {name: float(np.sqrt(np.mean(v[good] ** 2))) for name, v in
                (("right", right), ("unweighted", unweighted), ("wrong", wrong))}
    assert residual["right"] < 0.02 * float(np.sqrt(np.mean(background[good] ** 2)))
    assert residual["right"] < 0.3 * residual["unweighted"] and residual["right"] < 0.3 * residual["wrong"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_progress_is_monotonic_and_cancel_is_honoured_at_the_next_iteration(head, method):
    acq = head.acquisition
    reports = []
    _remove(method, head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction,
            progress=lambda fraction, message: reports.append(fraction))
    assert len(reports) >= 3 and reports == sorted(reports) and reports[-1] == 1.0

    # counted in progress reports, not seconds, so that load on the machine cannot fail it
    # (benchmarks/bench_inversion.py --cancel measures the latency in seconds)
    cancel = threading.Event()
    after_request = []

    def progress(fraction: float, message: str) -> None:
        if cancel.is_set():
            after_request.append(fraction)
        elif fraction > 0:
            cancel.set()

    with pytest.raises(QSMCancelled):
        _remove(method, head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction,
                progress=progress, cancel=cancel)
    assert len(after_request) <= 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_selectable_by_name_in_the_pipeline_config(method):
    config = PipelineConfig.from_dict({"background": {"method": method}})
    assert config.background.method == method


@pytest.mark.parametrize(
    "method, params",
    [("pdf", {"margin_mm": 0.0}), ("pdf", {"erosion_mm": -1.0}), ("lbv", {"tolerance": 0.0}),
     ("lbv", {"smoothing_steps": 0}), ("lbv", {"mask_source": "brain"})],
)
def test_bad_parameters_are_refused(head, method, params):
    acq = head.acquisition
    with pytest.raises(QSMInputError):
        _remove(method, head.total_field_hz, head.brain_mask, acq.voxel_size_mm, acq.b0_direction, **params)


def test_lbv_refuses_a_mask_without_interior():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[5, :, :] = True
    with pytest.raises(QSMInputError, match="interior"):
        _remove("lbv", np.zeros((10, 10, 10), np.float32), mask, (1.0, 1.0, 1.0), erosion_mm=0.0)
