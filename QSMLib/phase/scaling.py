"""Phase scaling: raw scanner ranges to radians.

Phase arrives as radians, degrees, integers (e.g. [-4096, 4095] or
[0, 4095] from DICOM) or arbitrarily scaled floats (e.g. +-0.00367). The
range is mapped linearly onto [-pi, pi); no values are inserted or clipped.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import numpy as np

from .._threads import thread_count
from ..errors import QSMInputError

PhaseScale = Literal["auto", "radians", "degrees", "integer", "range"]

#: Relative tolerance when comparing a data range with a known convention.
_RANGE_TOLERANCE = 0.05
#: The float32 values next to -pi (the first at or above it) and below pi: float32 radians in between are
#: already wrapped.
_FLOAT32_BELOW_MINUS_PI = np.nextafter(np.float32(-np.pi), np.float32(0.0))
_FLOAT32_BELOW_PI = np.nextafter(np.float32(np.pi), np.float32(0.0))
#: Below this magnitude (and above 0) ``(x + pi) - pi`` in double precision no longer rounds back to float32 x.
_TINY_RADIANS = np.float32(2.0e-8)


def detect_phase_scale(phase: np.ndarray) -> str:
    """Name the convention that ``phase`` is stored in.

    Parameters
    ----------
    phase : numpy.ndarray
        Raw phase values, any shape; non-finite values are ignored.

    Returns
    -------
    str
        ``"radians"`` (range within about [-pi, pi] or [0, 2 pi]),
        ``"degrees"`` (about [-180, 180] or [0, 360]), ``"integer"``
        (integer values over a power-of-two-like range such as
        [-4096, 4095] or [0, 4095]), or ``"range"`` (any other range whose
        extremes are nearly symmetric about 0 or start at 0: linear map of
        the observed span onto 2 pi).

    Raises
    ------
    QSMInputError
        When the range fits no convention (e.g. values from 0.2 to 7.1, or
        +-4.7, which could be radians beyond +-pi or a scaled range), so
        the scaling would be a guess. Pass an explicit scale instead.

    Examples
    --------
    >>> import numpy as np
    >>> detect_phase_scale(np.array([-180.0, 0.0, 179.5]))
    'degrees'
    """
    return _classify(*_finite_range(np.asarray(phase)))


def _classify(low: float, high: float, is_integer: bool) -> str:
    """The convention of phase whose finite values run from ``low`` to ``high`` (see :func:`detect_phase_scale`)."""
    span = high - low
    if span <= 0:
        raise QSMInputError(f"Phase is constant ({low:g}): this is not phase data.")
    if is_integer and span >= 255:
        return "integer"
    two_pi = 2.0 * np.pi
    if _close(span, two_pi) and (low >= -np.pi * (1 + _RANGE_TOLERANCE) and high <= two_pi * 1.001):
        return "radians"
    if _close(span, 360.0) and low >= -181.0 and high <= 361.0:
        return "degrees"
    half_span = max(abs(low), abs(high))
    # Between radians and degrees a range is ambiguous: radians with values
    # outside +-pi (e.g. already partly unwrapped) or a scaled range?
    plausible_range = half_span < np.pi * (1 - _RANGE_TOLERANCE) or half_span > 360.0 * (1 + _RANGE_TOLERANCE)
    symmetric = abs(high + low) <= 0.05 * span
    if plausible_range and (symmetric or abs(low) <= 0.01 * span):
        return "range"
    raise QSMInputError(
        f"Cannot tell how this phase is scaled: values run from {low:g} to {high:g}, which is neither "
        "radians, degrees, an integer range nor a range centred on 0. Give the scaling explicitly "
        "(--phase-scale radians|degrees|integer|range, or phase_to_radians(..., scale=...))."
    )


def _volumes(shape: tuple[int, ...], max_values: int = 1 << 23) -> list[tuple]:
    """Index tuples that cut an array of ``shape`` into pieces of at most about ``max_values`` values.

    Pieces run along the leading axes, so they are views of any strided array.
    """
    if len(shape) <= 1 or math.prod(shape[1:]) <= max_values:
        step = max(1, max_values // max(math.prod(shape[1:]), 1))
        return [(slice(start, start + step),) for start in range(0, shape[0] if shape else 1, step)] if shape else [()]
    return [(index, *rest) for index in range(shape[0]) for rest in _volumes(shape[1:], max_values)]


def _finite_range(values: np.ndarray) -> tuple[float, float, bool]:
    """Smallest and largest finite value, and whether every finite value is a whole number, in one pass.

    Raises
    ------
    QSMInputError
        When no value is finite.
    """
    low, high, is_integer = math.inf, -math.inf, True
    for piece in _volumes(values.shape):
        chunk = values[piece]
        finite = np.isfinite(chunk)
        if not finite.all():
            chunk = chunk[finite]
        if chunk.size == 0:
            continue
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        # Once a fraction is seen the data are not integer: later pieces need not be checked.
        is_integer = is_integer and bool(np.all(chunk == np.round(chunk)))
    if low > high:
        raise QSMInputError("Phase contains no finite values.")
    return low, high, is_integer


#: Thresholds of :func:`check_not_magnitude`. Measured (signal voxels, consecutive echoes): magnitudes of the
#: toy head, the numerical phantom and the in-vivo crop wrap in 0 % and fall in 93-100 %; their phases
#: (signed, unsigned 12-bit, masked to the brain, with a 20 Hz frequency offset) wrap in 2.8-32 % and fall
#: in 44-55 %.
_MAGNITUDE_MAX_WRAP_FRACTION = 0.005
_MAGNITUDE_MIN_FALL_FRACTION = 0.8
_MAGNITUDE_CHECK_SAMPLE = 200_000


def check_not_magnitude(phase: np.ndarray) -> None:
    """Refuse "phase" that is a magnitude image (files given in the wrong place or swapped).

    A magnitude mapped onto [-pi, pi) as a phase "range" gives nonsense chi
    of a few ppm. Real phase, in any scaling, wraps between echoes somewhere
    in the head; a magnitude is non-negative, never jumps by half its range
    from one echo to the next, and falls with echo time (T2* decay) almost
    everywhere. All three together are refused; single-echo data have no
    echo evolution and are not checked.

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, ...)
        Raw phase as read (any scaling), echoes along axis 0.

    Raises
    ------
    QSMInputError
        When it looks like a magnitude, with advice.

    Examples
    --------
    >>> decay = np.exp(-np.array([4.0, 8.0, 12.0])[:, None] / 30.0) * np.linspace(10, 100, 50)
    >>> check_not_magnitude(decay)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    QSMLib.errors.QSMInputError: The phase images look like magnitude images: ...
    """
    values = np.asarray(phase)
    if values.ndim < 2 or values.shape[0] < 2:
        return
    # The decision rests on fractions of voxels: a regular sample of at most ~200k voxels per echo
    # decides as well, without temporary arrays the size of a 9-echo whole-head acquisition.
    values = values.reshape(values.shape[0], -1)
    values = values[:, :: max(1, values.shape[1] // _MAGNITUDE_CHECK_SAMPLE)]
    finite = np.all(np.isfinite(values), axis=0)
    if not finite.any():
        return
    low, high = float(values[:, finite].min()), float(values[:, finite].max())
    span = high - low
    if low < 0 or span <= 0:
        return
    signal = finite & (values[0] - low > 0.1 * span)
    if not signal.any():
        return
    steps = np.diff(values[:, signal].astype(np.float64), axis=0)
    wrapped = float(np.mean(np.abs(steps) > 0.5 * span))
    falling = float(np.mean(steps < 0))
    if wrapped < _MAGNITUDE_MAX_WRAP_FRACTION and falling > _MAGNITUDE_MIN_FALL_FRACTION:
        raise QSMInputError(
            f"The phase images look like magnitude images: no value is negative, nothing wraps between echoes, and "
            f"the signal falls with echo time in {100 * falling:.0f} % of the voxels, as a magnitude decays. Check "
            "that the phase files are given as phase (--phase, or part-phase in BIDS) and the magnitude files as "
            "magnitude, not swapped. If this really is phase, give its scaling with --phase-scale."
        )


def _close(value: float, target: float) -> bool:
    return abs(value - target) <= _RANGE_TOLERANCE * target


def integer_phase_range(low: float, high: float) -> tuple[float, float]:
    """Half period and start of the smallest power-of-two range holding integer phase in [low, high].

    Returns ``(2^(b-1), -2^(b-1))`` for signed data in ``[-2^(b-1), 2^(b-1))``
    and ``(2^(b-1), 0)`` for unsigned data in ``[0, 2^b)``; the phase is then
    ``(v - start) * pi / half_period - pi``.

    Examples
    --------
    >>> integer_phase_range(-4096, 4094)  # Siemens, 12 bits after rescaling
    (4096.0, -4096.0)
    >>> integer_phase_range(3, 4000)  # unsigned 12 bits
    (2048.0, 0.0)
    """
    if low < 0:
        half_period = 2.0 ** int(np.ceil(np.log2(max(-low, high + 1.0))))
        return half_period, -half_period
    return 2.0 ** int(np.ceil(np.log2(high + 1.0))) / 2.0, 0.0


def phase_to_radians(
    phase: np.ndarray, scale: PhaseScale = "auto", *, out: Optional[np.ndarray] = None
) -> tuple[np.ndarray, str]:
    """Convert raw phase to radians in [-pi, pi).

    Parameters
    ----------
    phase : numpy.ndarray
        Raw phase (any shape). Non-finite values stay non-finite.
    scale : {"auto", "radians", "degrees", "integer", "range"}
        ``"auto"`` detects the convention with :func:`detect_phase_scale`.
        ``"integer"`` maps the smallest power-of-two range that holds the
        values, ``[-2^b, 2^b)`` or ``[0, 2^b)``, onto [-pi, pi): the
        stored range of a ``b``-bit scanner phase (Siemens 12 bits after
        rescaling: ``v * pi / 4096``), as the DICOM path maps it from the
        header, never from the observed minimum and maximum (a volume whose
        phase does not reach the extremes would be stretched). ``"range"``
        maps the observed extremes onto +-pi (symmetric data) or [0, max]
        onto [-pi, pi).
    out : numpy.ndarray of float32, optional
        Where to write the radians (``phase`` itself when it is float32 and
        no longer needed: no second array of its size is made). The work is
        done a volume at a time, in double precision.

    Returns
    -------
    radians : numpy.ndarray of float32
        Phase wrapped to [-pi, pi) (``out`` when given).
    scale : str
        The convention that was applied (useful for provenance).

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([-4096, -2048, 0, 2048, 4094])  # 12-bit integer phase after rescaling
    >>> radians, applied = phase_to_radians(raw)
    >>> applied, [round(float(v), 3) for v in radians]
    ('integer', [-3.142, -1.571, 0.0, 1.571, 3.14])
    """
    values = np.asarray(phase)
    if scale not in ("auto", "radians", "degrees", "integer", "range"):
        raise QSMInputError(f"Unknown phase scale {scale!r}: use auto, radians, degrees, integer or range.")
    low, high, is_integer = _finite_range(values)
    applied = _classify(low, high, is_integer) if scale == "auto" else scale
    if out is None:
        out = np.empty(values.shape, np.float32)
    elif out.shape != values.shape or out.dtype != np.float32:
        raise QSMInputError(f"out must be a float32 array of the phase's shape {values.shape}.")
    half_period, start = integer_phase_range(low, high) if applied == "integer" else (0.0, 0.0)

    def convert(piece: tuple) -> None:
        if applied == "radians" and values.dtype == np.float32:
            # float32 radians in [-pi, pi) come out of the double-precision wrap unchanged, except
            # values so close to 0 that adding pi loses their bits: only those (and any outside) are computed.
            kept = values[piece]
            recompute = (kept < _FLOAT32_BELOW_MINUS_PI) | (kept > _FLOAT32_BELOW_PI) | (
                (np.abs(kept) < _TINY_RADIANS) & (kept != 0))
            if out is not values:
                out[piece] = kept
            if recompute.any():
                radians = kept[recompute].astype(np.float64) + np.pi
                with np.errstate(invalid="ignore"):  # infinite stays non-finite (NaN)
                    out[piece][recompute] = np.mod(radians, 2.0 * np.pi) - np.pi
            return
        radians = values[piece].astype(np.float64)
        if applied == "degrees":
            np.deg2rad(radians, out=radians)
        elif applied == "integer":
            radians -= start
            radians *= np.pi / half_period
            radians -= np.pi
        elif applied == "range":
            if low < 0:
                radians *= np.pi / max(abs(low), abs(high))
            else:
                radians -= low
                radians *= 2.0 * np.pi / (high - low)
        radians += np.pi
        with np.errstate(invalid="ignore"):  # infinite stays non-finite (NaN)
            np.mod(radians, 2.0 * np.pi, out=radians)
        radians -= np.pi
        out[piece] = radians

    pieces = _volumes(values.shape)
    # Volumes are independent: convert them side by side (NumPy releases the GIL in its loops).
    with ThreadPoolExecutor(max(1, min(thread_count(), len(pieces)))) as pool:
        list(pool.map(convert, pieces))
    return out, applied
