"""The consensus phase stages inside the pipeline: presets, maps, NaN input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from synthetic import TEST_DATA

from QSMLib._wrapping import wrap
from QSMLib.acquisition import MultiEchoGRE
from QSMLib.errors import QSMWarning
from QSMLib.io.nifti import read_volume
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import DEFAULT_PRESET, PRESETS, PipelineConfig, run_pipeline


def _methods(config):
    return {stage: getattr(config, stage).method for stage in ("phase_offset", "bipolar", "unwrap", "echo_fit", "mask")}


def test_consensus_is_the_default_and_uses_the_consensus_phase_methods():
    assert DEFAULT_PRESET == "consensus"
    consensus = PRESETS["consensus"]()
    assert _methods(consensus) == {"phase_offset": "mcpc3ds", "bipolar": "linear", "unwrap": "romeo",
                                   "echo_fit": "weighted_linear", "mask": "phase_quality"}
    assert consensus.echo_fit.params == {"intercept": False}
    assert PipelineConfig().to_dict() == consensus.to_dict()
    assert PipelineConfig.from_json(consensus.to_json()).to_dict() == consensus.to_dict()


def test_fast_differs_from_consensus_only_in_the_inversion_and_the_solving_grid():
    # both invert the total field in one step: consensus with TFI (averaged with single-step TV), fast with
    # that single-step TV alone, stopping sooner; fast always solves on the scan's grid
    fast, consensus = PRESETS["fast"](), PRESETS["consensus"]()
    assert fast.inversion.method == "sstv" and fast.inversion.params == {"tolerance": 0.01}
    assert consensus.inversion.method == "tfi"
    assert fast.zero_fill_mm is None and consensus.zero_fill_mm == "auto"
    assert fast.background == consensus.background
    fast.inversion, fast.zero_fill_mm = consensus.inversion, consensus.zero_fill_mm
    assert fast.to_dict() == consensus.to_dict()


@pytest.fixture(scope="module")
def head():
    return simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), echo_times_s=(0.004, 0.008, 0.012, 0.016, 0.020), seed=5)


def _field_error(result, head):
    region = result.mask & head.brain_mask
    return float(np.std((result.total_field_hz - head.total_field_hz)[region]))


def test_consensus_phase_stages_in_the_pipeline(head):
    config = PRESETS["consensus"]()
    config.inversion.method = "tkd"
    result = run_pipeline(head.acquisition, config)
    assert {"phase_offset_rad", "romeo_quality", "fit_residual_rad", "field_weight"} <= set(result.maps)
    assert np.mean(result.mask[head.brain_mask]) > 0.999
    assert _field_error(result, head) < 0.3
    # Laplacian unwrapping without offset removal is measurably biased by the
    # sinus fields and the phase offsets.
    laplacian = PipelineConfig.from_dict({
        "phase_offset": "none", "unwrap": "laplacian", "mask": "magnitude", "inversion": "tkd",
        "echo_fit": {"method": "weighted_linear", "params": {"intercept": True}}})
    assert _field_error(run_pipeline(head.acquisition, laplacian), head) > 10 * _field_error(result, head)


@pytest.mark.parametrize("bipolar", [False, True])
def test_a_phase_handed_over_gives_the_same_maps_and_a_kept_one_is_left_as_it_was(bipolar):
    # qsm run and cohort tasks let the phase stages write into the acquisition's phase (overwrite_phase):
    # every map must be the same, bit for bit; without it the acquisition's phase must not change.
    head = simulate_head(voxel_size_mm=(3.0, 3.0, 3.0), seed=4, bipolar=bipolar)
    config = PRESETS["consensus"]()
    config.inversion.method = "tkd"
    kept = head.acquisition
    raw = kept.phase.copy()
    reference = run_pipeline(kept, config)
    np.testing.assert_array_equal(kept.phase, raw)
    handed = MultiEchoGRE(kept.magnitude, raw, kept.echo_times_s, kept.b0_tesla, affine=kept.affine,
                          bipolar=bipolar)
    result = run_pipeline(handed, config, overwrite_phase=True)
    for name in ("chi_ppm", "total_field_hz", "local_field_hz", "mask", "unwrapped_phase"):
        np.testing.assert_array_equal(getattr(result, name), getattr(reference, name), err_msg=name)
    assert sorted(result.maps) == sorted(reference.maps)
    for name, values in reference.maps.items():
        np.testing.assert_array_equal(result.maps[name], values, err_msg=name)
    assert np.shares_memory(handed.phase, result.unwrapped_phase)


# a 5-slice crop with its whole grid as the mask: a slab
@pytest.mark.filterwarnings("ignore:The field of view cuts the brain at both ends")
def test_nan_voxels_of_real_data_are_excluded():
    # The NaN test file: radians beyond +-pi (wrapped here, as --phase-scale radians does) and a NaN column.
    raw, affine = read_volume(TEST_DATA / "invivo_3echo_crop" / "phase_with_nan_2echo.nii.gz")
    magnitude = np.ones(raw.shape, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acquisition = MultiEchoGRE(magnitude, wrap(raw.astype(np.float32)), (0.004, 0.008), 3.0, affine=affine)
    assert any(issubclass(w.category, QSMWarning) and "NaN" in str(w.message) for w in caught)
    config = PRESETS["consensus"]()
    config.inversion.method = "tkd"
    result = run_pipeline(acquisition, config, mask=np.ones(acquisition.spatial_shape, bool))
    invalid = np.isnan(raw).any(axis=0)
    assert not result.mask[invalid].any()
    assert np.all(np.isfinite(result.unwrapped_phase)) and np.all(np.isfinite(result.chi_ppm))
