"""QC figures and reports: orthogonal slices as a PNG, a methods paragraph, an HTML index.

A QC figure shows each map's axial, coronal and sagittal slices with the
labels a reader needs (title, row and column titles, the subject's directions,
a colour bar per row with its window in the map's unit). It is assembled with
numpy, its text drawn from QSMLib's own bitmap font, and written by
SimpleITK's PNG writer, so QC needs nothing beyond QSMLib's core. The
methods text names each stage's method, parameters and paper (from the
method's own docstring); the HTML index of a cohort uses relative links only.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Optional, Sequence, Union
from urllib.parse import quote

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from ._bitmap_text import GLYPH_HEIGHT, GLYPH_WIDTH, draw_text, text_width, wrap_text
from ._bitmap_text import line_height as text_line_height
from .acquisition import MultiEchoGRE
from .errors import QSMInputError

if TYPE_CHECKING:
    from .pipeline import QSMResult


@dataclass(frozen=True)
class QCMap:
    """One row of a QC figure: a map, what it is, and how grey values are assigned to it.

    Attributes
    ----------
    name : str
        What the map is, e.g. "local field" (the row title).
    volume : numpy.ndarray, shape (n0, n1, n2)
        The map in array-axis order.
    unit : str
        Unit of the map's values, e.g. "Hz", "ppm" or "a.u.".
    window : (float, float), optional
        Values shown black and white, in ``unit``; None for :func:`auto_window`
        (1st to 99th percentile inside the montage's mask, from 0 for a map
        without negative values).
    outline : numpy.ndarray of bool, shape (n0, n1, n2), optional
        A mask whose boundary is drawn in white over the map, which is then
        dimmed (and its colour bar with it) so that the outline stands out.
    """

    name: str
    volume: np.ndarray
    unit: str
    window: Optional[tuple[float, float]] = None
    outline: Optional[np.ndarray] = None


#: Brightness of a map under an outline (the outline itself is white).
OUTLINE_DIMMING = 0.6
#: Percentiles of the values inside the mask that an automatic window spans.
AUTO_WINDOW_PERCENTILES = (1.0, 99.0)
#: Width of a colour bar and space between panels, in font pixels (they grow with the text).
_BAR_WIDTH = 8
_GAP = 4
_TEXT_GREY = 255
_NOTE_GREY = 170


@dataclass
class _Row:
    """One row of a QC figure, ready to place: title lines, note, colour bar labels and panels."""

    title: list[str]
    note: str
    high_label: str
    low_label: str
    brightness: float
    panels: list[np.ndarray]


def _display_axes(affine: np.ndarray) -> tuple[list[int], list[bool]]:
    """For each world axis (R, A, S), the closest array axis and whether it runs the other way."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    order: list[int] = []
    flips: list[bool] = []
    for world_axis in range(3):
        weights = np.abs(direction[world_axis]).copy()
        weights[order] = -1.0
        array_axis = int(np.argmax(weights))
        order.append(array_axis)
        flips.append(bool(direction[world_axis, array_axis] < 0))
    return order, flips


def to_display_orientation(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder and flip axes so that indices along axes 0, 1, 2 increase (approximately) towards R, A, S.

    ``affine`` maps array indices to RAS mm; for an oblique volume each world
    axis takes the array axis closest to it (no resampling).
    """
    order, flips = _display_axes(affine)
    display = np.transpose(volume, order)
    for axis, flip in enumerate(flips):
        if flip:
            display = np.flip(display, axis=axis)
    return display


def display_voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along the axes of :func:`to_display_orientation` (R, A, S)."""
    order, _ = _display_axes(affine)
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)[order]


def orthogonal_slices(display_volume: np.ndarray, centre: Optional[Sequence[int]] = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a volume in display orientation.

    Image rows run top-down from anterior (axial) or superior (coronal,
    sagittal); columns run from the subject's left to right (axial, coronal)
    or from posterior to anterior (sagittal), as :data:`PANEL_EDGES` names.
    """
    c = [n // 2 for n in display_volume.shape] if centre is None else list(centre)
    axial = display_volume[:, :, c[2]].T[::-1]
    coronal = display_volume[:, c[1], :].T[::-1]
    sagittal = display_volume[c[0], :, :].T[::-1]
    return [axial, coronal, sagittal]


#: Column title and the anatomical direction at the (top, bottom, left, right) edge of each slice.
PANEL_EDGES = (("axial", ("A", "P", "L", "R")), ("coronal", ("S", "I", "L", "R")),
               ("sagittal", ("S", "I", "P", "A")))
#: Display axes along the (rows, columns) of each slice of :func:`orthogonal_slices`.
_SLICE_AXES = ((1, 0), (2, 0), (2, 1))


def auto_window(volume: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Automatic display window: 1st to 99th percentile of the finite values inside ``mask``.

    A map without negative values (a magnitude, R2*) starts at 0 instead of
    its 1st percentile, so that black means no signal. Without a mask (or
    with an empty one) the percentiles are of the whole volume.

    Examples
    --------
    >>> auto_window(np.arange(-50.0, 51.0).reshape(1, 1, 101))
    (-49.0, 49.0)
    >>> auto_window(np.arange(101.0).reshape(1, 1, 101))
    (0.0, 99.0)
    """
    volume = np.asarray(volume)
    finite = np.isfinite(volume)
    values = volume[finite & mask] if mask is not None and np.any(mask & finite) else volume[finite]
    if not values.size:
        return 0.0, 1.0
    low, high = np.percentile(values, AUTO_WINDOW_PERCENTILES)
    if volume[finite].min() >= 0:
        low = 0.0
    return float(low), float(high)


def _to_grey(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    scaled = (np.nan_to_num(image) - low) / max(float(high - low), 1e-12)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _square_pixels(image: np.ndarray, pixel_mm: Sequence[float], target_mm: float) -> np.ndarray:
    """Nearest-neighbour resampling of a slice to square pixels of ``target_mm`` (a no-op when isotropic)."""
    for axis, size in enumerate(pixel_mm):
        n = image.shape[axis]
        n_out = max(1, int(round(n * size / target_mm)))
        if n_out != n:
            index = np.minimum(((np.arange(n_out) + 0.5) * target_mm / size).astype(int), n - 1)
            image = np.take(image, index, axis=axis)
    return image


def format_window_value(value: float) -> str:
    """A window limit as printed on a QC figure: three significant digits, no exponent between 1e-3 and 1e5.

    Examples
    --------
    >>> [format_window_value(v) for v in (-0.15, 0.25, 12.345, 1234.5, 0.0)]
    ['-0.15', '0.25', '12.3', '1234', '0']
    """
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 1e-3 or magnitude >= 1e5:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def colour_bar(height: int, *, width: int = _BAR_WIDTH, brightness: float = 1.0) -> np.ndarray:
    """A vertical greyscale ramp, white (the window's high value) at the top to black at the bottom.

    Returns
    -------
    numpy.ndarray of uint8, shape (height, width)
        Row r holds ``round(255 * brightness * (height - 1 - r) / (height - 1))``.
    """
    ramp = np.linspace(255.0 * brightness, 0.0, height) if height > 1 else np.array([255.0 * brightness])
    return np.repeat(np.round(ramp).astype(np.uint8)[:, None], width, axis=1)


def qc_montage(
    maps: Sequence[QCMap],
    affine: np.ndarray,
    *,
    mask: Optional[np.ndarray] = None,
    title: str = "",
    text_scale: Optional[int] = None,
) -> np.ndarray:
    """A labelled QC figure: one row per map, columns axial, coronal and sagittal.

    The figure has the title at the top, the column titles above the slices,
    the subject's directions (R/L, A/P, S/I) at the edges of the first row's
    slices, at the left of each row the map's name and unit, and at its right
    a colour bar labelled with the window limits in that unit. Slices cross at
    the centre of ``mask`` and have square pixels of the finest voxel size.

    Parameters
    ----------
    maps : sequence of QCMap
        The rows, top to bottom; volumes share one grid (array-axis order).
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm of that grid (for orientation and pixel size).
    mask : numpy.ndarray of bool, optional
        Region for automatic windows and the slice centre.
    title : str
        First line(s) of the figure (wrapped to its width).
    text_scale : int, optional
        Pixels per font pixel; by default 1, and more for slices over 160
        pixels, so that labels keep their size relative to the slices.

    Returns
    -------
    numpy.ndarray of uint8, shape (rows, columns)
        Greyscale figure on black (write it with :func:`write_png`).

    Examples
    --------
    >>> volume = np.linspace(0.0, 1.0, 8000, dtype=np.float32).reshape(20, 20, 20)
    >>> figure = qc_montage([QCMap("test map", volume, "a.u.", (0.0, 1.0))], np.eye(4), title="Example")
    >>> figure.dtype, figure.max()
    (dtype('uint8'), np.uint8(255))
    """
    if not maps:
        raise QSMInputError("qc_montage needs at least one map.")
    shape = np.shape(maps[0].volume)
    for spec in maps:
        for what, array in (("volume", spec.volume), ("outline", spec.outline)):
            if array is not None and np.shape(array) != shape:
                raise QSMInputError(f"QC map {spec.name!r}: {what} of shape {np.shape(array)} differs from the "
                                    f"first map's {shape}; all maps of a QC figure must share one grid.")
    if mask is not None and np.shape(mask) != shape:
        raise QSMInputError(f"QC mask of shape {np.shape(mask)} differs from the maps' {shape}.")

    display_mask = None if mask is None else to_display_orientation(np.asarray(mask, dtype=bool), affine)
    centre = None
    if display_mask is not None and display_mask.any():
        centre = [int(np.round(np.mean(index))) for index in np.nonzero(display_mask)]
    voxel_mm = display_voxel_size(affine)
    pixel_mm = float(voxel_mm.min())

    def panels_of(volume: np.ndarray) -> list[np.ndarray]:
        slices = orthogonal_slices(to_display_orientation(volume, affine), centre)
        return [_square_pixels(s, voxel_mm[list(axes)], pixel_mm) for s, axes in zip(slices, _SLICE_AXES)]

    rows = []
    for spec in maps:
        volume = np.asarray(spec.volume, dtype=np.float32)
        low, high = (float(spec.window[0]), float(spec.window[1])) if spec.window is not None else auto_window(
            volume, mask)
        brightness = 1.0
        panels = [_to_grey(p, (low, high)) for p in panels_of(volume)]
        if spec.outline is not None:
            brightness = OUTLINE_DIMMING
            edges = panels_of(np.asarray(spec.outline, dtype=bool))
            panels = [np.where(_boundary(e), np.uint8(255), np.round(p * brightness).astype(np.uint8))
                      for p, e in zip(panels, edges)]
        rows.append(_Row(title=[spec.name] + ([f"({spec.unit})"] if spec.unit else []),
                         note="auto window" if spec.window is None else "fixed window",
                         high_label=f"{format_window_value(high)} {spec.unit}".strip(),
                         low_label=f"{format_window_value(low)} {spec.unit}".strip(),
                         brightness=brightness, panels=panels))
    scale = text_scale or max(1, int(np.ceil(max(rows[0].panels[0].shape + rows[0].panels[2].shape) / 160)))
    return _compose(rows, title, scale, note=_auto_note(maps, mask))


def _auto_note(maps: Sequence[QCMap], mask: Optional[np.ndarray]) -> str:
    """The figure's footnote: where the slices cross and what an automatic window is."""
    masked = mask is not None and bool(np.any(mask))
    note = f"Slices cross at the {'mask' if masked else 'volume'} centre."
    if any(spec.window is None for spec in maps):
        low, high = AUTO_WINDOW_PERCENTILES
        note = (f"auto window: {low:g}st (0 if no negative values) to {high:g}th percentile "
                f"{'inside the mask' if masked else 'of the volume'}. {note}")
    return note


def _compose(rows: list[_Row], title: str, scale: int, *, note: str) -> np.ndarray:
    """Place the title, column titles, panels, row titles, colour bars and note on one black canvas."""
    step = text_line_height(scale)
    glyph_rows = GLYPH_HEIGHT * scale
    gap = _GAP * scale
    margin = 2 * gap
    panel_heights = [p.shape[0] for p in rows[0].panels]
    panel_widths = [p.shape[1] for p in rows[0].panels]
    row_title_width = text_width("x" * 12, scale)
    row_titles = [[line for text in row.title for line in wrap_text(text, row_title_width, scale)]
                  + [row.note] for row in rows]
    title_width = max(text_width(line, scale) for lines in row_titles for line in lines)
    label_width = max(text_width(label, scale) for row in rows for label in (row.high_label, row.low_label))
    bar_width = _BAR_WIDTH * scale

    panels_left = margin + title_width + 2 * gap
    panel_lefts = [panels_left + sum(panel_widths[:k]) + 2 * k * gap for k in range(3)]
    bar_left = panel_lefts[2] + panel_widths[2] + 2 * gap
    label_left = bar_left + bar_width + gap
    content_width = label_left + label_width + margin
    title_lines = wrap_text(title, content_width - 2 * margin, scale)
    note_lines = wrap_text(note, content_width - 2 * margin, scale)
    width = max([content_width] + [2 * margin + text_width(line, scale) for line in title_lines + note_lines])

    # The colour bar spans the row, which is as high as the slices or the row's labels, whichever is higher.
    row_height = max(max(panel_heights), 2 * step, max(len(lines) for lines in row_titles) * step)
    column_titles_top = margin + len(title_lines) * step + (gap if title_lines else 0)
    first_row_top = column_titles_top + step + gap // 2
    notes_top = first_row_top + len(rows) * (row_height + 2 * gap)
    canvas = np.zeros((notes_top + len(note_lines) * step + margin, width), dtype=np.uint8)

    for i, line in enumerate(title_lines):
        draw_text(canvas, line, margin + i * step, margin, scale=scale, value=_TEXT_GREY)
    for (name, _), left, panel_width in zip(PANEL_EDGES, panel_lefts, panel_widths):
        draw_text(canvas, name, column_titles_top, left + (panel_width - text_width(name, scale)) // 2,
                  scale=scale, value=_TEXT_GREY)
    for r, (row, lines) in enumerate(zip(rows, row_titles)):
        row_top = first_row_top + r * (row_height + 2 * gap)
        for panel, left in zip(row.panels, panel_lefts):
            canvas[row_top: row_top + panel.shape[0], left: left + panel.shape[1]] = panel
        block_top = row_top + (row_height - ((len(lines) - 1) * step + glyph_rows)) // 2
        for i, line in enumerate(lines):
            grey = _NOTE_GREY if i == len(lines) - 1 else _TEXT_GREY
            draw_text(canvas, line, block_top + i * step, margin, scale=scale, value=grey)
        canvas[row_top: row_top + row_height, bar_left: bar_left + bar_width] = colour_bar(
            row_height, width=bar_width, brightness=row.brightness)
        draw_text(canvas, row.high_label, row_top, label_left, scale=scale, value=_TEXT_GREY)
        draw_text(canvas, row.low_label, row_top + row_height - glyph_rows, label_left, scale=scale,
                  value=_TEXT_GREY)
        if r == 0:
            _draw_directions(canvas, row_top, panel_lefts, row.panels, scale)
    for i, line in enumerate(note_lines):
        draw_text(canvas, line, notes_top + i * step, margin, scale=scale, value=_NOTE_GREY)
    return canvas


def _draw_directions(canvas: np.ndarray, row_top: int, panel_lefts: Sequence[int], panels: Sequence[np.ndarray],
                     scale: int) -> None:
    """Letters of the subject's directions at the middle of each slice's edges, with a dark halo.

    Slices less than three letters high or four wide get none (the letters would cover them).
    """
    cap_rows = 7 * scale
    for (_, (top, bottom, left, right)), panel_left, panel in zip(PANEL_EDGES, panel_lefts, panels):
        height, width = panel.shape
        if height < 3 * GLYPH_HEIGHT * scale or width < 4 * (GLYPH_WIDTH + 1) * scale:
            continue
        middle_row = row_top + (height - cap_rows) // 2
        centre_column = panel_left + width // 2
        for letter, row, column in ((top, row_top + 1, centre_column - text_width(top, scale) // 2),
                                    (bottom, row_top + height - cap_rows - 1,
                                     centre_column - text_width(bottom, scale) // 2),
                                    (left, middle_row, panel_left + 1),
                                    (right, middle_row, panel_left + width - 1 - text_width(right, scale))):
            draw_text(canvas, letter, row, column, scale=scale, value=255, halo=True)


#: Window of the susceptibility row of a reconstruction's QC figure, in ppm (brain tissue and veins).
QC_CHI_WINDOW_PPM = (-0.15, 0.25)


def reconstruction_qc(result: QSMResult, acquisition: MultiEchoGRE, *, name: str,
                      chi_window_ppm: tuple[float, float] = QC_CHI_WINDOW_PPM,
                      mask_outline: bool = False) -> np.ndarray:
    """The QC figure of one reconstruction: magnitude, total field, local field and chi.

    Parameters
    ----------
    result : QSMResult
        The pipeline's result.
    acquisition : MultiEchoGRE
        Its input (first-echo magnitude, geometry, echoes and B0 for the title).
    name : str
        What was reconstructed (starts the title), e.g. the acquisition's name.
    chi_window_ppm : (float, float)
        Fixed window of the chi row, so that figures of a cohort compare; the
        other rows use automatic windows.
    mask_outline : bool
        Add a row with the brain mask's outline over the magnitude.

    Returns
    -------
    numpy.ndarray of uint8
        The figure of :func:`qc_montage`.
    """
    voxel_mm = np.asarray(acquisition.voxel_size_mm, dtype=float)
    voxel = (f"{voxel_mm[0]:g} mm" if np.allclose(voxel_mm, voxel_mm[0])
             else "x".join(f"{v:g}" for v in voxel_mm) + " mm")
    title = (f"{name}: {acquisition.n_echoes} echoes, B0 {acquisition.b0_tesla:g} T, {voxel} voxels, "
             f"chi by {result.config.inversion.method}")
    magnitude = acquisition.magnitude[0]
    maps = [QCMap("magnitude", magnitude, "a.u.")]
    if result.total_field_hz is not None:
        maps.append(QCMap("total field", result.total_field_hz, "Hz"))
    maps += [QCMap("local field", result.local_field_hz, "Hz"), QCMap("chi", result.chi_ppm, "ppm", chi_window_ppm)]
    if mask_outline:
        maps.append(QCMap("brain mask (white) on magnitude", magnitude, "a.u.", outline=result.mask))
    return qc_montage(maps, acquisition.affine, mask=result.mask, title=title)


#: Groups of automatic ROIs whose centre a row pair of the atlas QC figure crosses, with a caption.
_ATLAS_QC_VIEWS = (("basal ganglia and thalamus", ("caudate", "putamen", "globus_pallidus", "thalamus")),
                   ("midbrain", ("substantia_nigra", "red_nucleus")))


def atlas_qc(magnitude: np.ndarray, chi_ppm: np.ndarray, labels: np.ndarray, label_names: dict[int, str],
             affine: np.ndarray, *, mask: np.ndarray, title: str,
             chi_window_ppm: tuple[float, float] = QC_CHI_WINDOW_PPM) -> np.ndarray:
    """QC figure of automatic ROIs: their outlines over the magnitude and chi, through the basal ganglia and midbrain.

    Two figures of :func:`qc_montage` one above the other, each with the
    outlines (white) over the magnitude and over chi: the first with slices
    crossing at the centre of the left caudate, putamen, globus pallidus and
    thalamus ROIs, the second at the left substantia nigra and red nucleus
    (so that the sagittal slices cut through them).

    Parameters
    ----------
    magnitude, chi_ppm : numpy.ndarray, shape (n0, n1, n2)
        The (echo-combined) magnitude and chi.
    labels : numpy.ndarray of int, shape (n0, n1, n2)
        The ROIs (0 = none).
    label_names : dict of int to str
        Names per label (``structure_left`` / ``structure_right``).
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm.
    mask : numpy.ndarray of bool
        Brain mask (the magnitude's automatic window is taken inside it).
    title : str
        Title of the figure (e.g. what was registered and how well).
    chi_window_ppm : (float, float)
        Window of the chi rows.

    Returns
    -------
    numpy.ndarray of uint8

    Examples
    --------
    >>> volume = np.linspace(0.0, 1.0, 27000, dtype=np.float32).reshape(30, 30, 30)
    >>> labels = np.zeros((30, 30, 30), np.int16)
    >>> labels[10:14, 10:14, 10:14], labels[16:20, 16:20, 8:12] = 5, 9
    >>> names = {5: "globus_pallidus_left", 9: "substantia_nigra_left"}  # names end in _left / _right
    >>> figure = atlas_qc(volume, volume - 0.5, labels, names, np.eye(4), mask=volume > 0.2, title="ROIs")
    >>> figure.dtype, figure.ndim
    (dtype('uint8'), 2)
    """
    labels = np.asarray(labels)
    outline = labels > 0
    magnitude_window = auto_window(magnitude, mask)
    figures = []
    for caption, structures in _ATLAS_QC_VIEWS:
        # the left structures' centre: the sagittal slice then cuts through them, not between the hemispheres
        members = [label for label, name in label_names.items()
                   if name.rsplit("_", 1)[0] in structures and name.endswith("_left")]
        centre_region = np.isin(labels, members)
        if not centre_region.any():
            continue
        maps = [QCMap("magnitude + ROI outlines", magnitude, "a.u.", magnitude_window, outline=outline),
                QCMap("chi + ROI outlines", chi_ppm, "ppm", chi_window_ppm, outline=outline)]
        heading = f"Slices through the left {caption}"
        heading = f"{title}. {heading}" if not figures else heading
        figures.append(qc_montage(maps, affine, mask=centre_region, title=heading))
    if not figures:
        raise QSMInputError("The ROI map is empty: there is nothing to show.")
    width = max(f.shape[1] for f in figures)
    return np.vstack([np.pad(f, ((0, 0), (0, width - f.shape[1]))) for f in figures])


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
                     configuration: str, consensus: bool, extra_paragraphs: Sequence[str] = ()) -> str:
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
    extra_paragraphs : sequence of str
        Further paragraphs after the stages (e.g. how automatic ROIs were made).
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
    for paragraph in extra_paragraphs:
        lines += ["", paragraph]
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
        None), ``roi`` (rows of :func:`QSMLib.roi.roi_statistics`) and
        optionally ``warnings`` (the run's warnings: listed with the
        acquisition, counted in the table, e.g. a map that looks negated).
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
        f"{counts['failed']} failed; {sum(bool(r.get('warnings')) for r in records)} with warnings.</p>",
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
        warned = len(record.get("warnings") or [])
        status = record["status"] + (f", {warned} warning{'s' * (warned > 1)}" if warned else "")
        parts.append(f'<tr{css}><td class="t"><a href="#{link(record["name"])}">{html.escape(record["name"])}</a>'
                     f'</td><td class="t">{html.escape(status)}</td>{cells}</tr>')
    parts += ["</table>", "<h2>Acquisitions</h2>"]
    for record in records:
        parts.append(f'<section id="{html.escape(record["name"], quote=True)}"><h3>{html.escape(record["name"])}</h3>')
        seconds = record.get("seconds")
        detail = record["status"] + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
        if record.get("reason"):
            detail += ": " + record["reason"]
        parts.append(f"<p>{html.escape(detail)}</p>")
        if record.get("warnings"):
            parts.append("<ul>" + "".join(f"<li>Warning: {html.escape(w)}</li>" for w in record["warnings"]) + "</ul>")
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
