"""Cohort reporting units: HTML escaping and the methods paragraph (QC figures: test_report_qc.py).

The report of a real cohort run is checked in test_batch.py (it shares that run)."""

from test_batch import check_html

from QSMLib.report import cohort_index_html, method_reference, methods_markdown


def test_index_escapes_untrusted_text(tmp_path):
    record = {"name": "sub-x", "status": "failed", "reason": "<script>alert(1)</script> & more", "seconds": 1.0,
              "outputs": {}, "qc": None, "roi": []}
    text = cohort_index_html([record], title="a <b> title", links=[("methods", "methods.md")])
    check_html(text)
    assert "<script>" not in text and "&lt;script&gt;" in text and "a &lt;b&gt; title" in text


def test_index_lists_each_acquisitions_warnings_and_counts_them():
    warned = {"name": "sub-ge", "status": "processed", "reason": None, "seconds": 2.0, "outputs": {}, "qc": None,
              "roi": [], "warnings": ["The susceptibility map looks sign-reversed: <rerun> with phase_sign=-1", "x"]}
    quiet = dict(warned, name="sub-ok", warnings=[])
    text = cohort_index_html([warned, quiet], title="t", links=[])
    check_html(text)
    assert "2 processed, 0 already complete (skipped), 0 failed; 1 with warnings." in text
    assert '<td class="t">processed, 2 warnings</td>' in text and '<td class="t">processed</td>' in text
    assert "<li>Warning: The susceptibility map looks sign-reversed: &lt;rerun&gt; with phase_sign=-1</li>" in text
    section = text[text.index('<section id="sub-ok">'):]
    assert "Warning:" not in section.split("</section>")[0]


def test_methods_cite_the_consensus_only_for_the_consensus_preset():
    config = {"unwrap": {"method": "laplacian", "params": {}}, "inversion": {"method": "tkd", "params": {}}}
    text = methods_markdown(config, {"QSMLib": "9"}, stages_used={"unwrap", "inversion"}, n_acquisitions=1,
                            echo_counts=[3], field_strengths_t=[2.89], configuration="x", consensus=True)
    assert "Shmueli K, de Zwart JA" in text and "Schofield MA, Zhu Y" in text and "ISMRM" in text
    assert "2.89 T" in text
    assert method_reference("inversion", "tkd").startswith("Shmueli K")
    assert "Consensus" in method_reference("reference", "whole_brain")
    assert method_reference("phase_offset", "none") == ""
