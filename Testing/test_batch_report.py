"""Cohort reporting units: HTML escaping, the methods paragraph, the QC mask outline.

The report of a real cohort run is checked in test_batch.py (it shares that run)."""

import numpy as np
from test_batch import check_html

from QSMLib.report import cohort_index_html, method_reference, methods_markdown, qc_montage


def test_index_escapes_untrusted_text(tmp_path):
    record = {"name": "sub-x", "status": "failed", "reason": "<script>alert(1)</script> & more", "seconds": 1.0,
              "outputs": {}, "qc": None, "roi": []}
    text = cohort_index_html([record], title="a <b> title", links=[("methods", "methods.md")])
    check_html(text)
    assert "<script>" not in text and "&lt;script&gt;" in text and "a &lt;b&gt; title" in text


def test_methods_cite_the_consensus_only_for_the_consensus_preset():
    config = {"unwrap": {"method": "laplacian", "params": {}}, "inversion": {"method": "tkd", "params": {}}}
    text = methods_markdown(config, {"QSMLib": "9"}, stages_used={"unwrap", "inversion"}, n_acquisitions=1,
                            echo_counts=[3], field_strengths_t=[2.89], configuration="x", consensus=True)
    assert "Shmueli et al., MRM 2009" in text and "ISMRM" in text and "2.89 T" in text
    assert method_reference("inversion", "tkd") and method_reference("reference", "whole_brain") == ""


def test_qc_montage_outline_row_draws_the_mask_boundary():
    volume = np.full((20, 22, 24), 100.0, np.float32)
    volume[0, 0, 0] = 0.0
    mask = np.zeros(volume.shape, bool)
    mask[5:15, 5:17, 6:18] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    plain = qc_montage([("a", volume, (0, 200))], affine, mask=mask)
    outlined = qc_montage([("a", volume, (0, 200))], affine, mask=mask, outline=mask)
    assert outlined.shape[0] == 2 * plain.shape[0] and np.array_equal(outlined[: plain.shape[0]], plain)
    row = outlined[plain.shape[0]:]
    assert row.max() == 255 and set(np.unique(row)) == {0, 76, 255}  # dimmed image (127 * 0.6) and outline
    axial = row[: 22, : 20]  # first panel: the axial slice, display rows = anterior first
    assert np.count_nonzero(axial == 255) == 2 * (10 + 12) - 4  # the rectangle's perimeter, once
