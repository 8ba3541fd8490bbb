"""QC figures and reports: orthogonal slices as a PNG, a methods paragraph, an HTML index.

Panels are window-levelled greyscale images assembled with numpy and written
by SimpleITK's PNG writer, so QC needs nothing beyond QSMLib's core. The
methods text names each stage's method, parameters and paper (from the
method's own docstring); the HTML index of a cohort uses relative links only.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Collection, Optional, Sequence, Union
from urllib.parse import quote

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk


def to_display_orientation(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder and flip axes so that axes 0, 1, 2 run (approximately) along R, A, S."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    order, flips = [], []
    for world_axis in range(3):
        weights = np.abs(direction[world_axis]).copy()
        weights[order] = -1.0
        array_axis = int(np.argmax(weights))
        order.append(array_axis)
        flips.append(direction[world_axis, array_axis] < 0)
    display = np.transpose(volume, order)
    for axis, flip in enumerate(flips):
        if flip:
            display = np.flip(display, axis=axis)
    return display


def _window(image: np.ndarray, window: Optional[tuple[float, float]], mask: Optional[np.ndarray]) -> np.ndarray:
    if window is None:
        values = image[mask] if mask is not None and mask.any() else image[np.isfinite(image)]
        low, high = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
    else:
        low, high = window
    scaled = (np.nan_to_num(image) - low) / max(float(high - low), 1e-12)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def orthogonal_slices(display_volume: np.ndarray, centre: Optional[Sequence[int]] = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices (image rows top-down = superior/anterior first)."""
    c = [n // 2 for n in display_volume.shape] if centre is None else list(centre)
    axial = display_volume[:, :, c[2]].T[::-1]
    coronal = display_volume[:, c[1], :].T[::-1]
    sagittal = display_volume[c[0], :, :].T[::-1]
    return [axial, coronal, sagittal]


def qc_montage(
    maps: Sequence[tuple[str, np.ndarray, Optional[tuple[float, float]]]],
    affine: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    outline: Optional[np.ndarray] = None,
    gap: int = 4,
) -> np.ndarray:
    """One row per map (axial, coronal, sagittal), as a uint8 image.

    Parameters
    ----------
    maps : sequence of (name, volume, window)
        Volumes in array-axis order; ``window`` (low, high) or None for the
        1st-99th percentile inside ``mask``.
    affine : numpy.ndarray
        Array-index -> world affine (for display orientation).
    mask : numpy.ndarray of bool, optional
        Region for automatic windows and the slice centre.
    outline : numpy.ndarray of bool, optional
        When given, one more row shows the first map, dimmed, with the
        boundary of this mask (e.g. the brain mask) drawn in white.
    """
    display_mask = None if mask is None else to_display_orientation(mask, affine)
    centre = None
    if display_mask is not None and display_mask.any():
        centre = [int(np.round(np.mean(np.nonzero(display_mask)[a]))) for a in range(3)]
    rows = []
    rows_to_draw = [(volume, window, None) for _, volume, window in maps]
    if outline is not None and maps:
        rows_to_draw.append((maps[0][1], maps[0][2], np.asarray(outline, dtype=bool)))
    for volume, window, boundary in rows_to_draw:
        display = to_display_orientation(np.asarray(volume, dtype=np.float32), affine)
        panels = [_window(s, window, m) for s, m in zip(
            orthogonal_slices(display, centre),
            orthogonal_slices(display_mask, centre) if display_mask is not None else [None] * 3,
        )]
        if boundary is not None:
            edges = orthogonal_slices(to_display_orientation(boundary, affine), centre)
            # The image is dimmed so that the white outline stands out on bright tissue.
            panels = [np.where(_boundary(e), np.uint8(255), (p * 0.6).astype(np.uint8)) for p, e in zip(panels, edges)]
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap))) for p in panels]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, gap), (0, width - r.shape[1]))) for r in rows], axis=0)


def _boundary(mask_slice: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask that touch a pixel outside it (4-connectivity)."""
    return mask_slice & ~ndi.binary_erosion(mask_slice, border_value=0)


def write_png(path: Union[str, Path], image: np.ndarray, *, upscale: int = 2) -> Path:
    """Write a uint8 greyscale image as PNG (nearest-neighbour upscaled for legibility)."""
    path = Path(path)
    enlarged = np.kron(image, np.ones((upscale, upscale), dtype=np.uint8)) if upscale > 1 else image
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(enlarged)), str(path))
    return path


# --- Cohort report: methods paragraph and HTML index -------------------------------------------

#: Readable names of the pipeline stages, in pipeline order.
STAGE_TITLES = {
    "phase_offset": "phase offset correction", "bipolar": "bipolar readout correction", "unwrap": "phase unwrapping",
    "echo_fit": "echo combination", "mask": "brain masking", "background": "background field removal",
    "inversion": "dipole inversion", "reference": "susceptibility referencing", "relaxometry": "R2*/T2* mapping",
}
CONSENSUS_CITATION = (
    "QSM Consensus Organization Committee. Recommended implementation of quantitative susceptibility mapping "
    "for clinical research in the brain: a consensus of the ISMRM electro-magnetic tissue properties study "
    "group. Magn Reson Med 2024;91:1834-1862."
)


def method_reference(stage: str, method: str) -> str:
    """The citation of a registered method, taken from its documentation ('' when it names none).

    The numpydoc ``References`` section of the method's docstring wins; then
    "(... et al. ...)" citations in its docstring; then those of its module
    when the module is named after the method (``vsharp``, ``l2``, ...).
    """
    from .pipeline import REGISTRY

    function = REGISTRY[stage][method].function
    doc = inspect.getdoc(function) or ""
    references = re.search(r"^References\n-+\n(.*?)(?:\n\n[A-Z][A-Za-z ]+\n-+\n|\Z)", doc, re.S | re.M)
    if references:
        return " ".join(references.group(1).split())
    sources = [doc]
    module = sys.modules.get(function.__module__)
    if module is not None and function.__module__.rsplit(".", 1)[-1] == method:
        sources.append(inspect.getdoc(module) or "")
    for text in sources:
        citations = re.findall(r"\(([^()]*et al[^()]*)\)", " ".join(text.split()))
        if citations:
            return "; ".join(citations)
    return ""


def methods_markdown(config: dict[str, Any], software: dict[str, str], *, stages_used: Collection[str],
                     n_acquisitions: int, echo_counts: Sequence[int], field_strengths_t: Sequence[float],
                     configuration: str, consensus: bool) -> str:
    """A methods paragraph (Markdown) naming what a cohort run actually used.

    Parameters
    ----------
    config : dict
        ``PipelineConfig.to_dict()`` of the run.
    software : dict of str to str
        Package -> version, as in ``QSMResult.provenance()["software"]``.
    stages_used : collection of str
        Stages that ran in at least one acquisition (the keys of
        ``QSMResult.timings_s``); the others (e.g. bipolar correction of
        monopolar data) are not described.
    n_acquisitions : int
        Acquisitions reconstructed.
    echo_counts, field_strengths_t : sequence
        Echoes per acquisition and B0 in tesla (for the data description).
    configuration : str
        How the configuration was chosen, e.g. "the `fast` preset".
    consensus : bool
        True when ``config`` is the ``consensus`` preset (its defaults follow
        the 2024 ISMRM consensus, which is then cited).
    """
    versions = ", ".join(f"{name} {version}" for name, version in software.items())
    echoes = sorted(set(int(n) for n in echo_counts))
    fields = sorted(set(round(float(b), 3) for b in field_strengths_t))
    lines = [
        "# Methods",
        "",
        f"Quantitative susceptibility maps of {n_acquisitions} multi-echo gradient-echo acquisition(s) "
        f"({'/'.join(map(str, echoes)) or 'no'} echoes, B0 {', '.join(f'{b:g}' for b in fields) or 'unknown'} T) "
        f"were reconstructed with QSMLib ({versions}). Phase was converted to radians, and fields are in Hz "
        "until the dipole inversion; susceptibility is reported in ppm (positive = paramagnetic). The stages, "
        "methods and parameters were:",
        "",
    ]
    for stage, title in STAGE_TITLES.items():
        choice = config.get(stage, {})
        method = choice.get("method", "none")
        if method == "none" or stage not in stages_used:
            continue
        params = choice.get("params") or {}
        text = f"- **{title.capitalize()}**: `{method}`"
        if params:
            text += " (" + ", ".join(f"{k} = {v}" for k, v in sorted(params.items())) + ")"
        reference = method_reference(stage, method).rstrip(".")
        lines.append(text + (f"; {reference}." if reference else "."))
    if config.get("per_echo"):
        lines.append("- Each echo's field was inverted separately and the susceptibility maps averaged.")
    lines += ["", f"Configuration: {configuration}; every acquisition's provenance file records it in full."]
    if consensus:
        lines += ["", "Its defaults follow the 2024 ISMRM consensus recommendations: " + CONSENSUS_CITATION]
    return "\n".join(lines) + "\n"


def cohort_index_html(records: Sequence[dict[str, Any]], *, title: str, links: Sequence[tuple[str, str]],
                      roi_column: str = "mean_ppm") -> str:
    """An HTML page of a cohort run: failures, ROI values and one QC montage per acquisition.

    Parameters
    ----------
    records : sequence of dict
        One per acquisition with ``name``, ``status`` (``processed``,
        ``skipped`` or ``failed``), ``reason``, ``seconds``, ``outputs``
        (key -> path relative to the page), ``qc`` (relative PNG path or
        None) and ``roi`` (rows of :func:`QSMLib.roi.roi_statistics`).
    title : str
        Page title.
    links : sequence of (text, relative path)
        Files linked from the top of the page (methods, group table, ...).
    roi_column : str
        ROI statistic shown in the table (ppm).

    Returns
    -------
    str
        A complete HTML5 document; every path in it is relative, so the
        folder can be moved or shared as it is.
    """
    def link(path: str) -> str:
        return html.escape(quote(path), quote=True)

    counts = {s: sum(r["status"] == s for r in records) for s in ("processed", "skipped", "failed")}
    names = list(dict.fromkeys(row["name"] for r in records for row in r.get("roi") or []))
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}td.t,th.t{text-align:left}"
        ".failed{background:#fdd}img{max-width:100%;image-rendering:pixelated}</style>",
        "</head>", "<body>", f"<h1>{html.escape(title)}</h1>",
        f"<p>{counts['processed']} processed, {counts['skipped']} already complete (skipped), "
        f"{counts['failed']} failed.</p>",
        "<p>" + " | ".join(f'<a href="{link(path)}">{html.escape(text)}</a>' for text, path in links) + "</p>",
    ]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        parts += ["<h2>Failures</h2>", '<table><tr><th class="t">acquisition</th><th class="t">reason</th></tr>']
        parts += [f'<tr class="failed"><td class="t">{html.escape(r["name"])}</td>'
                  f'<td class="t">{html.escape(r.get("reason") or "")}</td></tr>' for r in failed]
        parts.append("</table>")
    parts += [f"<h2>ROI {html.escape(roi_column)} (ppm)</h2>", "<table>",
              '<tr><th class="t">acquisition</th><th class="t">status</th>'
              + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"]
    for record in records:
        values = {row["name"]: row.get(roi_column) for row in record.get("roi") or []}
        cells = "".join(f"<td>{_format_value(values.get(n))}</td>" for n in names)
        css = ' class="failed"' if record["status"] == "failed" else ""
        parts.append(f'<tr{css}><td class="t"><a href="#{link(record["name"])}">{html.escape(record["name"])}</a>'
                     f'</td><td class="t">{html.escape(record["status"])}</td>{cells}</tr>')
    parts += ["</table>", "<h2>Acquisitions</h2>"]
    for record in records:
        parts.append(f'<section id="{html.escape(record["name"], quote=True)}"><h3>{html.escape(record["name"])}</h3>')
        seconds = record.get("seconds")
        detail = record["status"] + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
        if record.get("reason"):
            detail += ": " + record["reason"]
        parts.append(f"<p>{html.escape(detail)}</p>")
        outputs = record.get("outputs") or {}
        if outputs:
            parts.append("<p>" + " | ".join(f'<a href="{link(path)}">{html.escape(key)}</a>'
                                            for key, path in outputs.items()) + "</p>")
        if record.get("qc"):
            parts.append(f'<p><img src="{link(record["qc"])}" alt="QC montage of {html.escape(record["name"])}: '
                         'rows magnitude, total field, local field, chi, mask outline; columns axial, coronal, '
                         'sagittal"></p>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _format_value(value: Any) -> str:
    if isinstance(value, (int, float)) and np.isfinite(value):
        return f"{value:.4f}"
    return ""
