"""Checks that need no truth: echoes out of order (magnitude or phase), and a map made from phase of the other
handedness."""

import itertools
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
from synthetic import TEST_DATA

from QSMLib.errors import QSMWarning
from QSMLib.io.nifti import load_acquisition
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PRESETS, run_pipeline, run_pipeline_from_field
from QSMLib.plausibility import (
    ECHO_RISE_ALLOWED,
    MIN_VOLUME_ML,
    REVERSED_BELOW,
    chi_tail_asymmetry,
    magnitude_decay,
    phase_evolution,
)

SIGN_WARNING = "looks sign-reversed"


def _sign_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, QSMWarning) and SIGN_WARNING in str(w.message)]


def test_a_brains_susceptibility_has_the_longer_positive_tail(suite_case):
    case = suite_case("small_qsmforward")
    voxel = case.acquisition.voxel_size_mm
    truth = chi_tail_asymmetry(case.chi_ppm, case.brain_mask, voxel)
    # measured +0.97 on this head's truth (its veins and nuclei against white matter)
    assert truth["checked"] and truth["tail_asymmetry"] > 0.9 and not truth["reversed"], truth
    negated = chi_tail_asymmetry(-case.chi_ppm, case.brain_mask, voxel)
    assert negated["reversed"] and negated["tail_asymmetry"] == pytest.approx(-truth["tail_asymmetry"]), negated
    assert negated["tail_asymmetry"] < REVERSED_BELOW


def test_a_small_crop_or_a_constant_map_is_not_judged(suite_case):
    case = suite_case("small_qsmforward")
    voxel = case.acquisition.voxel_size_mm
    centre = [int(np.mean(axis)) for axis in np.nonzero(case.brain_mask)]
    cube = tuple(slice(c - 8, c + 8) for c in centre)  # 48 mm: 111 mL deeper than 6 mm
    crop = chi_tail_asymmetry(case.chi_ppm[cube], case.brain_mask[cube], voxel)
    assert not crop["checked"] and 0 < crop["deep_volume_ml"] < MIN_VOLUME_ML, crop
    flat = chi_tail_asymmetry(np.zeros(case.chi_ppm.shape, np.float32), case.brain_mask, voxel)
    assert not flat["checked"] and flat["deep_volume_ml"] > MIN_VOLUME_ML, flat


def test_phase_of_the_other_handedness_is_reported_with_what_to_do(suite_case):
    case = suite_case("small_qsmforward")
    acquisition = case.acquisition
    left_handed = replace(acquisition, phase=-acquisition.phase)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong = run_pipeline(left_handed, PRESETS["consensus"]())
    messages = _sign_warnings(caught)
    assert len(messages) == 1 and "phase_sign=-1" in messages[0] and "--phase-sign -1" in messages[0], messages
    assert wrong.parameters["sign_check"]["reversed"]
    # told the handedness, the same data give a brain's map, no warning, and the check in the provenance
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        right = run_pipeline(replace(left_handed, phase_sign=-1), PRESETS["consensus"]())
    assert not _sign_warnings(caught)
    check = right.provenance()["chosen_parameters"]["sign_check"]
    # measured +1.11
    assert check["checked"] and not check["reversed"] and check["tail_asymmetry"] > 1.0, check
    # the pipeline is odd in the phase: the wrong map is the right one negated (measured: to the bit)
    np.testing.assert_allclose(wrong.chi_ppm, -right.chi_ppm, rtol=0, atol=1e-5)
    # the other way round: right-handed data declared left-handed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_pipeline(replace(acquisition, phase_sign=-1), PRESETS["consensus"]())
    messages = _sign_warnings(caught)
    assert len(messages) == 1 and "phase_sign=1" in messages[0], messages


def test_a_negated_field_map_is_reported(suite_case):
    case = suite_case("small_qsmforward")
    acquisition = case.acquisition
    with pytest.warns(QSMWarning, match=SIGN_WARNING + ".*negate it and rerun"):
        run_pipeline_from_field(
            -case.total_field_hz, case.brain_mask, field_kind="total", voxel_size_mm=acquisition.voxel_size_mm,
            b0_direction=acquisition.b0_direction, b0_tesla=acquisition.b0_tesla)


def test_the_magnitude_falls_from_echo_to_echo_and_rises_when_the_echoes_are_reversed(suite_case):
    magnitude = suite_case("small_qsmforward").acquisition.magnitude
    decay = magnitude_decay(magnitude)
    # measured: 1, 0.912, 0.824 (TE 4, 9, 14 ms)
    assert decay["relative_median"][0] == 1 and decay["largest_rise"] < -0.08, decay
    reversed_decay = magnitude_decay(magnitude[::-1])
    assert reversed_decay["largest_rise"] > 0.08 > ECHO_RISE_ALLOWED, reversed_decay


def test_echoes_out_of_order_are_reported_before_the_run_with_what_to_do(suite_case):
    """Echo 3's images given second (TE 4, 9, 14 ms): the map is wrong (default pipeline, chi NRMSE 41.6 -> 77.9 %;
    101.2 % with the three echoes reversed), and the magnitude, rising by 11 % from the second echo to the third,
    tells."""
    acquisition = suite_case("small_qsmforward").acquisition
    order = [0, 2, 1]
    shuffled = replace(acquisition, magnitude=acquisition.magnitude[order], phase=acquisition.phase[order])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(shuffled, PRESETS["fast"]())
    messages = [str(w.message) for w in caught if issubclass(w.category, QSMWarning)]
    # the first warning, before the readout's (the swapped echoes also look bipolar)
    assert re.match(r"The magnitude rises by 11 % over the head from echo 2 \(9 ms\) to echo 3 \(14 ms\).*"
                    r"not in the order of their echo times", messages[0]), messages
    assert result.parameters["echo_order"]["rise_after_echo"] == 2


def _out_of_order_phase(acquisition):
    """Every reordering of the phase echoes (magnitudes kept in order) but the identity, and whether it is one
    that :func:`phase_evolution` cannot tell (a reversal of evenly spaced echoes)."""
    n = acquisition.n_echoes
    for order in itertools.permutations(range(n)):
        if list(order) != list(range(n)):
            yield list(order), list(order) == list(range(n))[::-1]


def test_the_phase_of_a_real_scan_evolves_as_a_field_in_order_and_not_out_of_order():
    # the real in-vivo crop (3 echoes, TE 4, 8, 12 ms as its upstream tests assume); measured slope 0.995 in order
    folder = TEST_DATA / "invivo_3echo_crop"
    acquisition, _ = load_acquisition([folder / "mag.nii.gz"], [folder / "phase.nii.gz"],
                                      echo_times_s=[0.004, 0.008, 0.012], b0_tesla=3.0)
    in_order = phase_evolution(acquisition.magnitude, acquisition.phase, acquisition.echo_times_s)
    assert not in_order["out_of_order"] and in_order["failing"] is None, in_order
    assert in_order["comparisons"] and all(abs(slope - 1) < 0.02 for *_, slope in in_order["comparisons"])
    # the magnitude's scale does not matter (this crop's is 3e-5..8e-4; some scanners store smaller)
    rescaled = phase_evolution(acquisition.magnitude * 1e-6, acquisition.phase, acquisition.echo_times_s)
    assert rescaled == in_order, rescaled
    for order, reversal in _out_of_order_phase(acquisition):
        judged = phase_evolution(acquisition.magnitude, acquisition.phase[order], acquisition.echo_times_s)
        # measured: -0.48 to -1.39 for the four orders that are not a reversal, 0.984 reversed
        assert judged["out_of_order"] is not reversal, (order, judged)


@pytest.mark.parametrize("echo_times_s, comparisons", [((0.004, 0.008, 0.012), 1),
                                                      ((0.004, 0.008, 0.012, 0.016, 0.020, 0.024), 7)])
def test_bipolar_offsets_pass_as_echoes_in_order_and_swapped_phase_echoes_do_not(echo_times_s, comparisons):
    # the even echoes' readout offset, not declared: without it fitted out, the first two pairs' slope on the
    # three-echo head measured -0.18 (it outweighs this small head's field)
    acquisition = simulate_head(voxel_size_mm=(4.0, 4.0, 4.0), echo_times_s=echo_times_s, bipolar=True,
                                seed=5).acquisition
    in_order = phase_evolution(acquisition.magnitude, acquisition.phase, acquisition.echo_times_s)
    slopes = [slope for *_, slope in in_order["comparisons"]]
    # measured 0.994-1.001
    assert not in_order["out_of_order"] and len(slopes) == comparisons, in_order
    assert all(abs(slope - 1) < 0.015 for slope in slopes), in_order
    for order, reversal in _out_of_order_phase(acquisition) if len(echo_times_s) == 3 else []:
        judged = phase_evolution(acquisition.magnitude, acquisition.phase[order], acquisition.echo_times_s)
        assert judged["out_of_order"] is not reversal, (order, judged)
    for first in range(acquisition.n_echoes - 1):
        order = list(range(acquisition.n_echoes))
        order[first], order[first + 1] = order[first + 1], order[first]
        judged = phase_evolution(acquisition.magnitude, acquisition.phase[order], acquisition.echo_times_s)
        assert judged["out_of_order"], (order, judged)


def test_phase_echoes_out_of_order_behind_magnitudes_in_order_are_reported_with_what_to_do(suite_case):
    """Echo 3's phase given second, the magnitudes in order: the magnitude check passes, the phase tells."""
    acquisition = suite_case("small_qsmforward").acquisition
    shuffled = replace(acquisition, phase=acquisition.phase[[0, 2, 1]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(shuffled, PRESETS["fast"]())
    messages = [str(w.message) for w in caught if issubclass(w.category, QSMWarning)]
    assert re.match(r"The phase does not evolve with the echo times as a field does: the frequency from echoes 2 and 3 "
                    r"\(9 and 14 ms\) is -?\d\.\d\d times that from echoes 1 and 2 \(4 and 9 ms\).*Give the phase "
                    r"echoes in the order of the echo times", messages[0]), messages
    recorded = result.parameters["echo_order"]
    assert recorded["largest_rise"] < 0 and recorded["phase"]["out_of_order"], recorded
    in_order = phase_evolution(acquisition.magnitude, acquisition.phase, acquisition.echo_times_s)
    assert not in_order["out_of_order"], in_order
