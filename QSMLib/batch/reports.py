"""A cohort's reports: group ROI table, summary, methods paragraph and HTML index."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping

from .._version import __version__
from ..io.bids import write_json_atomic, write_text_atomic
from ..pipeline import PRESETS
from ..report import cohort_index_html, methods_markdown
from ..roi import COLUMNS as ROI_COLUMNS
from ..rois import methods_text
from .layout import GROUP_TABLE, INDEX_FILE, METHODS_FILE, SUMMARY_FILE, CohortSummary


def write_reports(summary: CohortSummary, config: Mapping[str, Any], *, config_name: str) -> dict[str, Path]:
    """Group ROI table, summary JSON, methods paragraph and HTML index of a cohort run."""
    out = summary.out_dir
    good = [r for r in summary.records if r["status"] != "failed"]
    rows = [{"participant_id": f"sub-{r['subject']}", "session_id": f"ses-{r['session']}" if r["session"] else "n/a",
             "acquisition": r["name"], **row} for r in good for row in r["roi"]]
    columns = ["participant_id", "session_id", "acquisition", *ROI_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    files = {"group_table": write_text_atomic(out / GROUP_TABLE, buffer.getvalue())}

    files["summary"] = write_json_atomic(out / SUMMARY_FILE, {
        "QSMLib": __version__, "cluster": summary.cluster, "config": dict(config),
        "counts": {s: summary.count(s) for s in ("processed", "skipped", "failed")},
        "acquisitions": [{k: v for k, v in r.items() if k != "roi"} for r in summary.records],
    })
    provenances = [json.loads((out / r["outputs"]["provenance"]).read_text()) for r in good]
    software = provenances[0]["software"] if provenances else {"QSMLib": __version__}
    consensus = dict(config) == PRESETS["consensus"]().to_dict()
    roi_depths = sorted({p["rois"]["core_depth_mm"] for p in provenances if "rois" in p})
    files["methods"] = write_text_atomic(out / METHODS_FILE, methods_markdown(
        dict(config), software, stages_used={s for p in provenances for s in p.get("timings_s", {})},
        n_acquisitions=len(good), echo_counts=[len(p["inputs"]["echo_times_s"]) for p in provenances],
        field_strengths_t=[p["inputs"]["b0_tesla"] for p in provenances], consensus=consensus,
        configuration=f"the `{config_name}` preset" if config_name in PRESETS else f"the file `{config_name}`",
        extra_paragraphs=[methods_text(roi_depths)] if roi_depths else [],
    ))
    links = [("methods", METHODS_FILE), ("group ROI table", GROUP_TABLE), ("summary", SUMMARY_FILE),
             ("dataset description", "dataset_description.json")]
    files["index"] = write_text_atomic(out / INDEX_FILE, cohort_index_html(
        summary.records, title=f"QSM cohort: {out.name}", links=links))
    return files
