"""Phase scaling: raw scanner ranges to radians.

Phase arrives as radians, degrees, integers (e.g. [-4096, 4095] or
[0, 4095] from DICOM) or arbitrarily scaled floats (e.g. +-0.00367). The
range is mapped linearly onto [-pi, pi); no values are inserted or clipped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import QSMInputError

PhaseScale = Literal["auto", "radians", "degrees", "integer", "range"]

#: Relative tolerance when comparing a data range with a known convention.
_RANGE_TOLERANCE = 0.05


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
    values = np.asarray(phase)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise QSMInputError("Phase contains no finite values.")
    low, high = float(finite.min()), float(finite.max())
    span = high - low
    if span <= 0:
        raise QSMInputError(f"Phase is constant ({low:g}): this is not phase data.")
    is_integer = bool(np.all(finite == np.round(finite))) and span >= 255
    if is_integer:
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


def phase_to_radians(phase: np.ndarray, scale: PhaseScale = "auto") -> tuple[np.ndarray, str]:
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

    Returns
    -------
    radians : numpy.ndarray of float32
        Phase wrapped to [-pi, pi).
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
    values = np.asarray(phase, dtype=np.float64)
    applied = detect_phase_scale(values) if scale == "auto" else scale
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise QSMInputError("Phase contains no finite values.")
    low, high = float(finite.min()), float(finite.max())
    if applied == "radians":
        radians = values
    elif applied == "degrees":
        radians = np.deg2rad(values)
    elif applied == "integer":
        half_period, start = integer_phase_range(low, high)
        radians = (values - start) * (np.pi / half_period) - np.pi
    elif applied == "range":
        half_span = max(abs(low), abs(high))
        radians = values * (np.pi / half_span) if low < 0 else (values - low) * (2.0 * np.pi / (high - low))
    else:
        raise QSMInputError(
            f"Unknown phase scale {scale!r}: use auto, radians, degrees, integer or range."
        )
    wrapped = np.mod(radians + np.pi, 2.0 * np.pi) - np.pi
    return wrapped.astype(np.float32), applied
