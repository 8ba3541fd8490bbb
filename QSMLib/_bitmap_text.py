"""Text for QC figures: a 5x9 bitmap font drawn with numpy.

QC figures are written without matplotlib or Pillow (QSMLib's core is numpy,
scipy and SimpleITK), so labels are stamped from this font. The glyphs were
drawn for this project (SlicerQSM licence); they cover printable ASCII (32 to
126). Each glyph is 5 pixels wide and 9 high: rows 0-6 hold capitals and
digits (row 6 is the baseline), lowercase letters are 5 rows high (rows 2-6),
and rows 7-8 hold descenders (g, j, p, q, y, comma).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 9
#: Width of a space, in font pixels (other glyphs are as wide as their ink).
SPACE_WIDTH = 3
#: Gap between neighbouring glyphs and between lines, in font pixels.
LETTER_GAP = 1
LINE_GAP = 2

# One glyph per printable ASCII character from " " (32) to "~" (126), in order:
# nine base-32 digits ("0"-"9", "A"-"V"), one per row from the top, whose five
# bits are the row's pixels with the most significant bit at the left.
_GLYPH_CODES = (
    "000000000 444440400 AAA000000 AAVAVAA00 4FKE5U400 OP248J300 CIK8LID00 448000000 248884200 842224800 "
    "04LEL4000 044V44000 00000CC48 000V00000 00000CC00 11248GG00 EHJLPHE00 4C4444E00 EH1248V00 V2421HE00 "
    "26AIV2200 VGU11HE00 68GUHHE00 V12488800 EHHEHHE00 EHHF12C00 0CC0CC000 0CC0CC480 248G84200 00V0V0000 "
    "842124800 EH1240400 EHNLNGE00 EHHVHHH00 UHHUHHU00 EHGGGHE00 SIHHHIS00 VGGUGGV00 VGGUGGG00 EHGNHHF00 "
    "HHHVHHH00 E44444E00 72222IC00 HIKOKIH00 GGGGGGV00 HRLLHHH00 HHPLJHH00 EHHHHHE00 UHHUGGG00 EHHHLID00 "
    "UHHUKIH00 FGGE11U00 V44444400 HHHHHHE00 HHHHHA400 HHHLLLA00 HHA4AHH00 HHA444400 V1248GV00 E88888E00 "
    "GG8421100 E22222E00 4AH000000 0000000V0 842000000 00E1FHF00 GGMPHHU00 00EGGHE00 11DJHHF00 00EHVGE00 "
    "698S88800 00FHHHF1E GGMPHHH00 40C444E00 2062222IC GGIKOKI00 C44444E00 00QLLLL00 00MPHHH00 00EHHHE00 "
    "00UHHHUGG 00FHHHF11 00MPGGG00 00FGE1U00 88S889600 00HHHJD00 00HHHA400 00HHLLA00 00HA4AH00 00HHHHF1E "
    "00V248V00 244844200 444444440 844244800 008L20000"
).split()
FIRST_CHARACTER, LAST_CHARACTER = " ", "~"


def _decode(code: str) -> np.ndarray:
    rows = [int(digit, 32) for digit in code]
    bits = 1 << np.arange(GLYPH_WIDTH - 1, -1, -1)
    return (np.array(rows)[:, None] & bits) > 0


_GLYPHS = {chr(ord(FIRST_CHARACTER) + i): _decode(code) for i, code in enumerate(_GLYPH_CODES)}


def glyph(character: str) -> np.ndarray:
    """The (9, 5) bool bitmap of one character (True = ink); others than printable ASCII give "?".

    Examples
    --------
    >>> print("\\n".join("".join("#" if p else "." for p in row) for row in glyph("T")[:3]))
    #####
    ..#..
    ..#..
    """
    return _GLYPHS.get(character, _GLYPHS["?"])


def _columns(character: str) -> np.ndarray:
    """The glyph's inked columns (a space keeps SPACE_WIDTH empty columns)."""
    bitmap = glyph(character)
    if character == " ":
        return np.zeros((GLYPH_HEIGHT, SPACE_WIDTH), dtype=bool)
    inked = np.flatnonzero(bitmap.any(axis=0))
    return bitmap[:, inked[0]: inked[-1] + 1]


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """One line of proportionally spaced text as a bool image (True = ink).

    Parameters
    ----------
    text : str
        The line (characters other than printable ASCII are drawn as "?").
    scale : int
        Pixels per font pixel (nearest-neighbour enlargement).

    Returns
    -------
    numpy.ndarray of bool, shape (9 * scale, width)
        Rows top-down; the baseline is row ``7 * scale - 1``.

    Examples
    --------
    >>> text_mask("Hz").shape  # two glyphs of 5 columns and the gap between them
    (9, 11)
    >>> text_mask("Hz", scale=2).shape
    (18, 22)
    """
    pieces: list[np.ndarray] = []
    for character in text:
        if pieces:
            pieces.append(np.zeros((GLYPH_HEIGHT, LETTER_GAP), dtype=bool))
        pieces.append(_columns(character))
    line = np.concatenate(pieces, axis=1) if pieces else np.zeros((GLYPH_HEIGHT, 0), dtype=bool)
    return np.kron(line, np.ones((scale, scale), dtype=bool)) if scale > 1 else line


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of :func:`text_mask` of ``text``."""
    return text_mask(text, scale).shape[1]


def line_height(scale: int = 1) -> int:
    """Vertical distance between the tops of two consecutive lines, in pixels."""
    return (GLYPH_HEIGHT + LINE_GAP) * scale


def wrap_text(text: str, max_width: int, scale: int = 1) -> list[str]:
    """Split ``text`` at spaces into lines no wider than ``max_width`` pixels (a longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", scale) <= max_width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def draw_text(image: np.ndarray, text: str, top: int, left: int, *, scale: int = 1, value: int = 255,
              halo: bool = False) -> None:
    """Draw one line of text into a 2D uint8 image, in place.

    Parameters
    ----------
    image : numpy.ndarray of uint8, shape (rows, columns)
        Image drawn into.
    text : str
        The line.
    top, left : int
        Image row and column of the text's top-left corner; the text must fit.
    scale : int
        Pixels per font pixel.
    value : int
        Grey value of the ink.
    halo : bool
        Also set the pixels around the ink to 0, so that the text stays
        legible over an image.

    Examples
    --------
    >>> image = np.zeros((9, 12), dtype=np.uint8)
    >>> draw_text(image, "Hz", 0, 1)
    >>> int(image.max()), int(image[:, 0].max())
    (255, 0)
    """
    ink = text_mask(text, scale)
    rows, columns = ink.shape
    if top < 0 or left < 0 or top + rows > image.shape[0] or left + columns > image.shape[1]:
        raise ValueError(f"text {text!r} ({rows}x{columns} pixels at row {top}, column {left}) does not fit "
                         f"in a {image.shape[0]}x{image.shape[1]} image")
    region = image[top: top + rows, left: left + columns]
    if halo:
        # The ring one pixel around the ink, clipped to the image.
        ring = ndi.binary_dilation(np.pad(ink, 1), np.ones((3, 3), dtype=bool))
        r0, c0 = max(top - 1, 0), max(left - 1, 0)
        r1, c1 = min(top + rows + 1, image.shape[0]), min(left + columns + 1, image.shape[1])
        image[r0:r1, c0:c1][ring[r0 - top + 1: r1 - top + 1, c0 - left + 1: c1 - left + 1]] = 0
    region[ink] = value
