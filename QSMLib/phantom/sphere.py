"""A tiny sphere scan for documentation examples and quick checks (milliseconds to build).

A paramagnetic sphere inside a spherical "brain" in a box of tissue; the
field is the exact analytic field of a sphere (no FFT, no inverse crime);
multi-echo GRE signal with T2* decay, a smooth phase offset and optional
noise. Too simple to measure accuracy with: use :func:`simulate_head` or
the validation suite (:mod:`QSMLib.phantom.suite`) for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..acquisition import MultiEchoGRE
from ..units import ppm_to_hz


@dataclass
class SphereScan:
    """A simulated multi-echo GRE scan of one susceptibility sphere and its truth.

    Attributes
    ----------
    acquisition : MultiEchoGRE
        Magnitude and wrapped phase (echo, n0, n1, n2), 1 mm voxels, B0 along axis 2.
    brain_mask : numpy.ndarray of bool, shape (n0, n1, n2)
        The spherical brain.
    chi_ppm : numpy.ndarray of float32
        True susceptibility (the inner sphere), ppm, 0 elsewhere.
    local_field_hz : numpy.ndarray of float32
        Exact field of the inner sphere, Hz.
    """

    acquisition: MultiEchoGRE
    brain_mask: np.ndarray
    chi_ppm: np.ndarray
    local_field_hz: np.ndarray


def sphere_scan(
    shape: Sequence[int] = (32, 32, 32),
    *,
    radius_mm: float = 5.0,
    chi_ppm: float = 0.2,
    echo_times_s: Sequence[float] = (0.004, 0.008, 0.012, 0.016),
    b0_tesla: float = 3.0,
    snr: float = 0.0,
    seed: int = 0,
) -> SphereScan:
    """Simulate a sphere of ``chi_ppm`` at the centre of a spherical brain (1 mm voxels).

    Parameters
    ----------
    shape : sequence of 3 int
        Grid shape; the brain has a radius of 40 % of the smallest axis.
    radius_mm : float
        Radius of the susceptibility sphere.
    chi_ppm : float
        Its susceptibility relative to the rest, ppm.
    echo_times_s : sequence of float
        Echo times, seconds.
    b0_tesla : float
        Field strength, tesla.
    snr : float
        Signal over the noise SD of the real and imaginary parts; 0: no noise.
    seed : int
        Seed of the noise.

    Returns
    -------
    SphereScan

    Examples
    --------
    >>> scan = sphere_scan()
    >>> scan.acquisition.magnitude.shape, scan.acquisition.echo_times_s
    ((4, 32, 32, 32), (0.004, 0.008, 0.012, 0.016))
    >>> round(float(scan.local_field_hz[16, 16, 16]), 6)  # the field inside a sphere is zero
    0.0
    """
    grid = np.indices(tuple(shape), dtype=np.float32)
    centre = (np.asarray(shape, np.float32) - 1) / 2
    offset = [grid[a] - centre[a] for a in range(3)]
    r = np.sqrt(sum(o * o for o in offset))
    brain = r <= 0.4 * min(shape)
    inside = r <= radius_mm
    cos_theta = np.divide(offset[2], r, out=np.zeros_like(r), where=r > 0)
    # Lorentz-corrected field of a uniform sphere: 0 inside, chi a^3/(3 r^3) (3 cos^2 - 1) outside.
    outside = np.where(inside, 0.0, chi_ppm * radius_mm**3 / (3.0 * np.maximum(r, radius_mm) ** 3)
                       * (3.0 * cos_theta**2 - 1.0)).astype(np.float32)
    local_hz = ppm_to_hz(outside, b0_tesla)
    rng = np.random.default_rng(seed)
    phase_offset = (0.3 + 0.02 * offset[0]).astype(np.float32)
    magnitude, phase = [], []
    for te in echo_times_s:
        amplitude = np.where(brain, np.exp(-20.0 * te), 0.0)
        signal = amplitude * np.exp(1j * (phase_offset + 2 * np.pi * local_hz * te))
        if snr > 0:
            signal = signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(signal.shape)) / snr
        magnitude.append(np.abs(signal))
        phase.append(np.angle(signal))
    acquisition = MultiEchoGRE(
        np.asarray(magnitude, np.float32), np.asarray(phase, np.float32), tuple(echo_times_s), b0_tesla,
        voxel_size_mm=(1.0, 1.0, 1.0),
    )
    return SphereScan(acquisition, brain, np.where(inside, np.float32(chi_ppm), np.float32(0)), local_hz)
