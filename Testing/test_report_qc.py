"""QC figures: the bitmap font, and a montage whose labels, colour bars and slices a reader can trust.

Labels are checked by rendering the expected text and finding it, pixel for
pixel, at the expected place in the figure; slices by building the expected
windowed, oriented slice by hand and finding it the same way.
"""

import numpy as np
import pytest
import scipy.ndimage as ndi

from QSMLib._bitmap_text import GLYPH_HEIGHT, draw_text, glyph, text_mask, text_width, wrap_text
from QSMLib.errors import QSMInputError
from QSMLib.report import QCMap, auto_window, colour_bar, format_window_value, qc_montage

PRINTABLE = [chr(code) for code in range(32, 127)]


def find(image, pattern, care=None):
    """Top-left (row, column) of every place where ``pattern`` equals ``image`` on the ``care`` pixels."""
    pattern = np.asarray(pattern)
    care = np.ones(pattern.shape, bool) if care is None else care
    rows, columns = pattern.shape
    n_rows, n_columns = image.shape[0] - rows + 1, image.shape[1] - columns + 1
    if n_rows <= 0 or n_columns <= 0:
        return []
    pixels = list(zip(*np.nonzero(care)))
    i, j = pixels[0]
    found_rows, found_columns = np.nonzero(image[i: i + n_rows, j: j + n_columns] == pattern[i, j])
    for i, j in pixels[1:]:
        keep = image[found_rows + i, found_columns + j] == pattern[i, j]
        found_rows, found_columns = found_rows[keep], found_columns[keep]
    return list(zip(found_rows.tolist(), found_columns.tolist()))


def text_image(text, scale=1, value=255):
    return np.where(text_mask(text, scale), np.uint8(value), np.uint8(0))


def find_text(image, text, scale=1, value=255):
    """Where ``text`` is drawn on a black background (the ink and the blank pixels of its box match)."""
    return find(image, text_image(text, scale, value))


def find_one(image, pattern, care=None):
    places = find(image, pattern, care)
    assert len(places) == 1, f"expected one match, found {len(places)}"
    return places[0]


def art(*rows):
    return np.array([[c == "#" for c in row] for row in rows])


# --- the font ---------------------------------------------------------------------------------


def test_every_printable_character_has_its_own_glyph():
    bitmaps = {c: glyph(c) for c in PRINTABLE}
    assert all(b.shape == (GLYPH_HEIGHT, 5) and b.dtype == bool for b in bitmaps.values())
    assert not bitmaps[" "].any()
    assert all(bitmaps[c].any() for c in PRINTABLE if c != " ")
    assert len({b.tobytes() for b in bitmaps.values()}) == len(PRINTABLE)
    # descenders hang below the baseline (rows 7-8), capitals and digits do not
    assert all(bitmaps[c][7:].any() for c in "gjpqy,") and not any(bitmaps[c][7:].any() for c in "AZ09bdx")
    assert np.array_equal(glyph("\u00b5"), glyph("?"))  # outside printable ASCII


def test_a_string_renders_to_the_expected_pixels():
    expected = np.concatenate([art(
        "#...#",
        "#...#",
        "#...#",
        "#####",
        "#...#",
        "#...#",
        "#...#",
        ".....",
        ".....",
    ), np.zeros((9, 1), bool), art(  # the one-pixel gap, then a "g" with its descender
        ".....",
        ".....",
        ".####",
        "#...#",
        "#...#",
        "#...#",
        ".####",
        "....#",
        ".###.",
    ), np.zeros((9, 1), bool), art(  # a "1" is as wide as its ink (proportional spacing)
        ".#.",
        "##.",
        ".#.",
        ".#.",
        ".#.",
        ".#.",
        "###",
        "...",
        "...",
    )], axis=1)
    assert np.array_equal(text_mask("Hg1"), expected)
    assert np.array_equal(text_mask("Hg1", scale=3), np.kron(expected, np.ones((3, 3), bool)))
    assert text_width("a b") == text_width("a") + 1 + 3 + 1 + text_width("b")  # a space is three pixels


def test_text_is_drawn_where_asked_and_wrapped_to_width():
    image = np.full((20, 40), 7, np.uint8)
    draw_text(image, "Hz", 3, 5, value=200)
    ink = text_mask("Hz")
    assert np.array_equal(image[3:12, 5:5 + ink.shape[1]] == 200, ink)
    assert np.count_nonzero(image == 200) == ink.sum() and np.count_nonzero(image != 200) == image.size - ink.sum()
    with pytest.raises(ValueError, match="does not fit"):
        draw_text(image, "too long for this image", 0, 0)
    lines = wrap_text("local field after background removal", 60)
    assert " ".join(lines) == "local field after background removal" and len(lines) > 1
    assert all(text_width(line) <= 60 for line in lines)


# --- the montage --------------------------------------------------------------------------------

SHAPE = (36, 44, 40)  # display axes R, A, S with an identity orientation


def _field_phantom():
    """A local-field-like map whose values inside the mask run evenly from -50 to 50 Hz."""
    mask = np.zeros(SHAPE, bool)
    mask[6:30, 8:36, 6:34] = True
    volume = np.full(SHAPE, 1000.0, np.float32)  # outside the mask: far outside any window
    volume[mask] = np.linspace(-50.0, 50.0, int(mask.sum()))
    volume[0, 0, 0] = -1000.0
    return volume, mask


def _grey(values, low, high):
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_the_figure_has_its_title_column_titles_row_titles_and_directions():
    volume, mask = _field_phantom()
    chi = np.where(mask, volume / 400, 0.0).astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    figure = qc_montage([QCMap("local field", volume, "Hz"), QCMap("chi", chi, "ppm", (-0.15, 0.25))], affine,
                        mask=mask, title="sub-01: test figure")
    centre = [int(round(np.mean(i))) for i in np.nonzero(mask)]
    panels = [chi[:, :, centre[2]].T[::-1], chi[:, centre[1], :].T[::-1], chi[centre[0], :, :].T[::-1]]
    places = [find_one(figure, _grey(p, -0.15, 0.25)) for p in panels]  # the chi row's three slices
    (chi_top, axial_left), (_, coronal_left), (_, sagittal_left) = places
    assert chi_top == places[1][0] == places[2][0] and axial_left < coronal_left < sagittal_left

    title_row, title_column = find_one(figure, text_image("sub-01: test figure"))
    assert title_column < axial_left and title_row < 15
    for name, left, panel in zip(("axial", "coronal", "sagittal"), (axial_left, coronal_left, sagittal_left),
                                 panels):
        row, column = find_one(figure, text_image(name))
        # centred over its column, between the title and the first row
        assert title_row < row < chi_top - panel.shape[0]
        assert abs(column + text_width(name) / 2 - (left + panel.shape[1] / 2)) <= 1
    # row titles at the left of their row, the unit under the name, the window rule under that
    for text, grey in (("chi", 255), ("(ppm)", 255), ("fixed window", 170)):
        row, column = find_one(figure, text_image(text, value=grey))
        assert column < axial_left and chi_top <= row < chi_top + panels[0].shape[0]
    field_title = find_one(figure, text_image("local field"))
    assert field_title[1] < axial_left and field_title[0] < chi_top - panels[0].shape[0]
    # (the footnote starts with the same words, below the last row)
    assert [row > field_title[0] for row, _ in sorted(find_text(figure, "auto window", value=170))] == [True, True]
    assert sorted(find_text(figure, "auto window", value=170))[0][0] < chi_top
    # the footnote says what an automatic window is
    assert find_text(figure, "auto window: 1st", value=170) and find_text(figure, "99th", value=170)

    # the subject's directions at the edges of the first row's slices, white with a dark ring over the image
    column_titles_row = find_one(figure, text_image("axial"))[0]
    for letter, left, width, edge in (
            ("A", axial_left, panels[0].shape[1], "top"), ("P", axial_left, panels[0].shape[1], "bottom"),
            ("L", axial_left, panels[0].shape[1], "left"), ("R", axial_left, panels[0].shape[1], "right"),
            ("S", coronal_left, panels[1].shape[1], "top"), ("I", coronal_left, panels[1].shape[1], "bottom"),
            ("P", sagittal_left, panels[2].shape[1], "left"), ("A", sagittal_left, panels[2].shape[1], "right")):
        ink = np.pad(text_mask(letter), 1)
        ring = ndi.binary_dilation(ink, np.ones((3, 3)))
        hits = [(r + 1, c + 1) for r, c in find(figure, np.where(ink, 255, 0), care=ring)
                if column_titles_row < r < chi_top and left <= c + 1 <= left + width - text_width(letter)]
        assert len(hits) == 1, (letter, edge, hits)
        column = hits[0][1] - left
        if edge in ("top", "bottom"):
            assert abs(column + text_width(letter) / 2 - width / 2) <= 1, letter
        else:
            assert (column if edge == "left" else width - column - text_width(letter)) == 1, letter


def test_colour_bars_run_from_the_window_top_down_and_print_the_window_used():
    volume, mask = _field_phantom()
    magnitude = np.where(mask, 300.0, 20.0).astype(np.float32)
    magnitude[mask] += np.linspace(0.0, 100.0, int(mask.sum()))
    figure = qc_montage([QCMap("local field", volume, "Hz"), QCMap("magnitude", magnitude, "a.u."),
                         QCMap("chi", volume / 100, "ppm", (-0.15, 0.25))], np.eye(4), mask=mask)
    bar = colour_bar(44, width=8)  # the rows are as high as the tallest slice: the axial slice, 44 pixels
    assert bar[0, 0] == 255 and bar[-1, 0] == 0 and np.all(np.diff(bar[:, 0].astype(int)) < 0)
    assert np.all(bar == bar[:, :1])
    bars = sorted(find(figure, bar))
    assert len(bars) == 3 and len({column for _, column in bars}) == 1

    # evenly spread values: the 1st and 99th percentile inside the mask are -49 and 49 Hz (not the +-1000 outside)
    assert auto_window(volume, mask) == pytest.approx((-49.0, 49.0))
    # a map without negative values starts at 0; its 99th percentile inside the mask is 399 a.u.
    assert auto_window(magnitude, mask) == pytest.approx((0.0, 399.0))
    for (bar_top, bar_left), (high, low) in zip(bars, (("49 Hz", "-49 Hz"), ("399 a.u.", "0 a.u."),
                                                       ("0.25 ppm", "-0.15 ppm"))):
        # the high value top-aligned with the bar at its right, the low value bottom-aligned under it
        (column,) = [c for r, c in find_text(figure, high) if r == bar_top]
        assert 0 < column - (bar_left + bar.shape[1]) <= 6
        assert (bar_top + bar.shape[0] - GLYPH_HEIGHT, column) in find_text(figure, low)
    assert not find_text(figure, "1000 Hz") and not find_text(figure, "50 Hz")


def test_slices_are_windowed_and_oriented_for_any_array_order():
    volume, mask = _field_phantom()
    centre = [int(round(np.mean(i))) for i in np.nonzero(mask)]
    # A black marker right of and anterior to the centre in the axial slice (display axes R, A, S).
    volume[centre[0] + 8, centre[1] + 10, centre[2]] = -1000.0

    def stored(display_volume):
        """The volume stored with axes (S, R, A), the S and R axes reversed; ``affine`` says so."""
        return np.transpose(display_volume, (2, 0, 1))[::-1, ::-1, :]

    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = -2.0, 2.0, -2.0, 1.0
    # (the first row carries the direction letters over its slices: the second row is checked)
    figure = qc_montage([QCMap("mask", stored(mask).astype(np.float32), "", (0, 1)),
                         QCMap("local field", stored(volume), "Hz", (-49.0, 49.0))], affine, mask=stored(mask))
    axial = _grey(volume[:, :, centre[2]].T[::-1], -49.0, 49.0)
    coronal = _grey(volume[:, centre[1], :].T[::-1], -49.0, 49.0)
    sagittal = _grey(volume[centre[0], :, :].T[::-1], -49.0, 49.0)
    places = [find_one(figure, panel) for panel in (axial, coronal, sagittal)]
    assert places[0][1] < places[1][1] < places[2][1]
    # anterior at the top and the subject's right on the right of the axial view
    (row, column), = np.argwhere(volume[:, :, centre[2]].T[::-1] == -1000.0)
    assert row < axial.shape[0] / 2 - 5 and column > axial.shape[1] / 2 + 5


def test_anisotropic_voxels_give_square_pixels():
    rng = np.random.default_rng(3)
    volume = rng.uniform(0.0, 1.0, (30, 32, 14)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])  # 2.5 mm slices: 35 pixels of 1 mm from 14 slices
    figure = qc_montage([QCMap("map", volume, "a.u.", (0.0, 1.0))] * 2, affine)  # the second row has no letters
    coronal = volume[:, 16, :].T[::-1]
    rows = np.minimum(((np.arange(35) + 0.5) / 2.5).astype(int), 13)
    assert len(find(figure, _grey(coronal[rows], 0.0, 1.0))) == 1
    assert len(find(figure, _grey(volume[:, :, 7].T[::-1], 0.0, 1.0))) == 1  # the axial slice is already square


def test_outline_row_dims_the_map_and_draws_the_mask_boundary_in_white():
    _, a, s = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (30, 32, 50)], indexing="ij")
    volume = 40.0 + 2 * a + s  # varies along A and S, so that each slice is found in one place only
    mask = np.zeros(volume.shape, bool)
    mask[5:15, 5:17, 6:18] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    figure = qc_montage([QCMap("magnitude", volume, "a.u.", (0, 200)),
                         QCMap("mask on magnitude", volume, "a.u.", (0, 200), outline=mask)], affine, mask=mask)
    dimmed = np.round(_grey(volume[:, :, 12].T[::-1], 0, 200) * 0.6).astype(np.uint8)  # axial slice, mask centre
    inside = mask[:, :, 12].T[::-1]  # rows 15-26 (anterior at the top), columns 5-14
    boundary = inside & ~ndi.binary_erosion(inside)
    assert np.count_nonzero(boundary) == 2 * (10 + 12) - 4 and np.all(dimmed < 160)
    outlined = np.where(boundary, np.uint8(255), dimmed)
    outline_top, _ = find_one(figure, outlined)
    # the colour bar of the row (as high as the sagittal slice, 50 pixels) is dimmed as well
    assert [row for row, _ in find(figure, colour_bar(50, brightness=0.6))] == [outline_top]
    assert [row for row, _ in find(figure, colour_bar(50))] == [outline_top - 50 - 8]  # the row above, 8 pixels up


def test_large_slices_get_larger_text_and_bad_input_is_refused():
    volume = np.zeros((170, 170, 6), np.float32)
    figure = qc_montage([QCMap("map", volume, "a.u.", (0.0, 1.0))], np.eye(4), title="big")
    assert find_text(figure, "axial", scale=2) and not find_text(figure, "axial")
    with pytest.raises(QSMInputError, match="share one grid"):
        qc_montage([QCMap("a", volume, "a.u."), QCMap("b", volume[:, :, :5], "a.u.")], np.eye(4))
    with pytest.raises(QSMInputError, match="at least one map"):
        qc_montage([], np.eye(4))


def test_window_values_are_printed_with_three_significant_digits():
    assert [format_window_value(v) for v in (-0.15, 0.25, 49.0, -3.174, 1234.6, 0.0, 2e-5)] == [
        "-0.15", "0.25", "49", "-3.17", "1235", "0", "2.00e-05"]
