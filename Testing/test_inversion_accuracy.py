"""Dipole inversion accuracy on the numerical head phantom, from a known local field.

The phantom is simulated on a grid twice as fine and averaged down (no
inverse crime). The local field carries the noise of a real echo fit: the
phantom's multi-echo phase is unwrapped with the help of the true field (so
no unwrapping error is added) and fitted by the pipeline's weighted linear
echo fit, which also gives the reliability map the weighted methods use.

Targets (issue 4): the best method at or below 30 % NRMSE with deep grey
matter means within 10 ppb of truth, and every method better than TKD.
"""


import numpy as np
import pytest

from QSMLib import metrics
from QSMLib._morphology import ventricle_mask
from QSMLib.fieldmap import weighted_linear
from QSMLib.inversion import METHODS
from QSMLib.phantom import deep_grey_matter_labels, simulate_head

VOXEL_MM = 1.5


@pytest.fixture(scope="module")
def head():
    """The phantom at 1.5 mm and its local field with echo-fit noise (Hz) plus the fit's reliability."""
    phantom = simulate_head(voxel_size_mm=(VOXEL_MM,) * 3, snr=100.0, seed=0)
    acq = phantom.acquisition
    times = np.asarray(acq.echo_times_s, np.float32).reshape(-1, 1, 1, 1)
    model = phantom.phase_offset_rad[None] + np.float32(2 * np.pi) * phantom.total_field_hz[None] * times
    unwrapped = acq.phase + np.float32(2 * np.pi) * np.round((model - acq.phase) / np.float32(2 * np.pi))
    fitted, maps = weighted_linear(unwrapped, acq.magnitude, acq.echo_times_s, mask=phantom.brain_mask)
    noisy_local = phantom.local_field_hz + (fitted - phantom.total_field_hz)
    return phantom, noisy_local.astype(np.float32), maps["field_weight"], maps["field_sd_hz"]


def _invert(head, method, **params):
    phantom, field, weight, field_sd = head
    acq = phantom.acquisition
    available = {"field_weight": weight, "field_sd_hz": field_sd, "magnitude": acq.magnitude,
                 "b0_direction": acq.b0_direction, "b0_tesla": acq.b0_tesla, "echo_times_s": acq.echo_times_s,
                 "background_removed": True}
    entry = METHODS[method]
    inputs = {name: available[name] for name in entry.inputs if name in available}  # device: the default, cpu
    return entry(field, phantom.brain_mask, acq.voxel_size_mm, **inputs, **params).chi_ppm


def _scores(head, chi):
    phantom = head[0]
    mask = phantom.brain_mask
    errors = metrics.roi_mean_errors_ppb(chi, phantom.chi_ppm, phantom.labels, deep_grey_matter_labels(phantom), mask)
    return metrics.nrmse(chi, phantom.chi_ppm, mask), errors


@pytest.fixture(scope="module")
def tkd_nrmse(head):
    return _scores(head, _invert(head, "tkd"))[0]


#: Upper bounds per method: NRMSE (%) and the largest deep grey matter error (ppb).
#: Measured at 1.5 mm: TKD 39 % / 30 ppb; L2 33.5 % / 39.1 (its automatic lambda, 0.028 mm^2 since stop 51,
#: when its rule came to weigh the measured noise at a quarter: 42.8 % / 66.0 at 0.096 mm^2 before; chosen on the
#: realistic suite, whose best lambdas are larger than this piecewise-constant phantom's: 0.003-0.007 mm^2 gives
#: 28.5 % / 19 ppb here); TV 14 % / 5; nonlinear TV 14 % / 5; RTS 19.0 % /
#: 11.4 (its automatic lambda; the paper's fixed mu = 1e5, lambda 1e-5: 25.6 % / 12.0); MEDI 12.8 % / 5.0 (its
#: automatic data weight; the fixed 100 of before: 9.3 % / 3.3).
BOUNDS = {
    "l2": (35.0, 42.0),
    "tv": (20.0, 10.0),
    "nltv": (20.0, 10.0),
    "rts": (21.0, 13.0),
    "medi": (20.0, 10.0),
}


@pytest.mark.parametrize("method", sorted(BOUNDS))
def test_method_beats_tkd_and_meets_its_bounds(head, tkd_nrmse, method):
    chi = _invert(head, method)
    nrmse, errors = _scores(head, chi)
    max_nrmse, max_roi_ppb = BOUNDS[method]
    assert nrmse < tkd_nrmse, f"{method}: NRMSE {nrmse:.1f} % is not below TKD's {tkd_nrmse:.1f}"
    assert nrmse <= max_nrmse
    assert max(abs(e) for e in errors.values()) <= max_roi_ppb, errors


def test_best_method_meets_the_issue_targets(head):
    chi = _invert(head, "tv")
    nrmse, errors = _scores(head, chi)
    assert nrmse <= 30.0
    assert all(abs(e) <= 10.0 for e in errors.values()), errors
    assert metrics.correlation(chi, head[0].chi_ppm, head[0].brain_mask) > 0.95
    assert metrics.hfen(chi, head[0].chi_ppm, head[0].brain_mask) < 20.0


def test_l2_l_curve_choice_beats_tkd(head, tkd_nrmse):
    nrmse, _ = _scores(head, _invert(head, "l2", regularization="l-curve"))
    assert nrmse < tkd_nrmse


def test_nonlinear_tv_ignores_phase_wraps_that_break_linear_tv(head):
    """A field off by one phase wrap at the data term's echo time costs nothing in the complex exponential."""
    phantom, field, weight, _ = head
    rng = np.random.default_rng(1)
    inside = np.argwhere(phantom.brain_mask)
    wrapped = np.zeros(phantom.brain_mask.shape, dtype=bool)
    for centre in inside[rng.choice(len(inside), 30, replace=False)]:
        wrapped[tuple(slice(max(c - 1, 0), c + 2) for c in centre)] = True
    wrapped &= phantom.brain_mask
    corrupted = field + np.where(wrapped, np.float32(1.0 / 0.02), 0).astype(np.float32)
    clean = phantom.brain_mask & ~wrapped
    corrupted_head = (phantom, corrupted, None, None)
    linear = metrics.nrmse(_invert(corrupted_head, "tv"), phantom.chi_ppm, clean)
    nonlinear = metrics.nrmse(_invert(corrupted_head, "nltv", echo_time_s=0.02), phantom.chi_ppm, clean)
    assert nonlinear < 20.0
    assert linear > 5 * nonlinear


def test_medi_plus_zero_makes_the_ventricles_uniform(head):
    phantom = head[0]
    acq = phantom.acquisition
    ventricles = ventricle_mask(acq.magnitude, phantom.brain_mask, acq.voxel_size_mm)
    plain = _invert(head, "medi", max_iterations=1, cg_max_iterations=20)
    with_csf = _invert(head, "medi", max_iterations=1, cg_max_iterations=20, csf_regularization=100.0)
    assert with_csf[ventricles].std() < 0.5 * plain[ventricles].std()
