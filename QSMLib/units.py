"""Physical constants and unit conversions (Hz <-> ppm of B0)."""

from __future__ import annotations

import numpy as np

#: Proton gyromagnetic ratio over 2 pi, in Hz per tesla (CODATA 2018).
GAMMA_BAR_HZ_PER_T = 42.577478e6


def hz_to_ppm(field_hz: np.ndarray, b0_tesla: float) -> np.ndarray:
    """Convert a frequency shift in Hz to a relative field shift in ppm of B0.

    Examples
    --------
    >>> round(float(hz_to_ppm(12.77, 3.0)), 4)  # 12.77 Hz at 3 T
    0.1
    """
    return (np.asarray(field_hz) * (1e6 / (GAMMA_BAR_HZ_PER_T * float(b0_tesla)))).astype(np.float32)


def ppm_to_hz(field_ppm: np.ndarray, b0_tesla: float) -> np.ndarray:
    """Convert a relative field shift in ppm of B0 to a frequency shift in Hz.

    Examples
    --------
    >>> round(float(ppm_to_hz(0.1, 3.0)), 2)
    12.77
    """
    return (np.asarray(field_ppm) * (GAMMA_BAR_HZ_PER_T * float(b0_tesla) * 1e-6)).astype(np.float32)


def b0_from_imaging_frequency(imaging_frequency_mhz: float) -> float:
    """Field strength in tesla from the proton imaging frequency in MHz.

    Examples
    --------
    >>> round(b0_from_imaging_frequency(123.2), 3)  # a '3 T' scanner at 123.2 MHz
    2.894
    """
    return float(imaging_frequency_mhz) * 1e6 / GAMMA_BAR_HZ_PER_T
