"""Referencing: whole brain, CSF (automatic lateral ventricles or a label) and any label."""

import numpy as np
import pytest

from QSMLib.errors import QSMInputError
from QSMLib.phantom import simulate_head
from QSMLib.pipeline import PipelineConfig, run_pipeline_from_field
from QSMLib.referencing import csf, label, ventricle_mask, whole_brain


@pytest.fixture(scope="module")
def head():
    return simulate_head(voxel_size_mm=(2.0, 2.0, 2.0), snr=100.0, supersample=1)


def _offset_chi(head, offset=0.37):
    return np.where(head.brain_mask, head.chi_ppm + np.float32(offset), 0).astype(np.float32)


def test_whole_brain_zeroes_the_mean(head):
    referenced, info = whole_brain(_offset_chi(head), head.brain_mask)
    assert abs(float(referenced[head.brain_mask].mean())) < 1e-6
    assert info["reference"] == "whole_brain" and info["voxels"] == int(head.brain_mask.sum())


@pytest.mark.parametrize("reference_label", [3, "globus_pallidus"])
def test_label_by_index_or_name(head, reference_label):
    referenced, info = label(_offset_chi(head), head.brain_mask, labels=head.labels, label_names=head.label_names,
                             reference_label=reference_label)
    assert abs(float(referenced[head.labels == 3].mean())) < 1e-6
    assert info["reference"] == f"label:{reference_label}"


def test_automatic_ventricles_match_the_phantom_csf(head):
    acq = head.acquisition
    found = ventricle_mask(acq.magnitude, head.brain_mask, acq.voxel_size_mm)
    truth = head.labels == 8
    assert found.sum() > 0.5 * truth.sum()
    assert (found & truth).sum() > 0.9 * found.sum()


def test_csf_reference_from_the_magnitude_removes_the_offset(head):
    acq = head.acquisition
    referenced, info = csf(_offset_chi(head), head.brain_mask, magnitude=acq.magnitude,
                           voxel_size_mm=acq.voxel_size_mm)
    assert info["reference"] == "csf" and info["csf_source"].startswith("automatic")
    # the phantom's ventricles are 0 ppm: the 0.37 ppm offset must be gone
    assert abs(float(referenced[head.labels == 8].mean())) < 0.005
    assert abs(info["offset_ppm"] - 0.37) < 0.005


def test_csf_reference_prefers_a_label(head):
    acq = head.acquisition
    chi = _offset_chi(head)
    _, named = csf(chi, head.brain_mask, magnitude=acq.magnitude, voxel_size_mm=acq.voxel_size_mm,
                   labels=head.labels, label_names=head.label_names)
    assert named["csf_source"] == "label:csf"
    _, chosen = csf(chi, head.brain_mask, labels=head.labels, label_names=head.label_names, csf_label=3)
    assert chosen["csf_source"] == "label:3"
    assert abs(chosen["offset_ppm"] - float(chi[head.labels == 3].mean())) < 1e-6


def test_csf_reference_explains_what_it_needs(head):
    acq = head.acquisition
    chi = _offset_chi(head)
    with pytest.raises(QSMInputError, match="label"):
        csf(chi, head.brain_mask)
    with pytest.raises(QSMInputError, match="two echoes"):
        csf(chi, head.brain_mask, magnitude=acq.magnitude[:1], voxel_size_mm=acq.voxel_size_mm)
    with pytest.raises(QSMInputError, match="ventricle"):
        csf(chi, head.brain_mask, magnitude=acq.magnitude, voxel_size_mm=acq.voxel_size_mm, min_depth_mm=200.0)


def test_pipeline_records_the_csf_reference_and_the_whole_brain_statistics(head):
    acq = head.acquisition
    config = PipelineConfig.from_dict({"inversion": {"method": "l2"}, "reference": {"method": "csf"}})
    result = run_pipeline_from_field(
        head.local_field_hz, head.brain_mask, field_kind="local", voxel_size_mm=acq.voxel_size_mm,
        b0_direction=acq.b0_direction, b0_tesla=acq.b0_tesla, config=config, labels=head.labels,
        label_names=head.label_names,
    )
    assert result.reference["reference"] == "csf" and result.reference["csf_source"] == "label:csf"
    assert {"whole_brain_mean_ppm", "whole_brain_sd_ppm"} <= set(result.reference)

