"""The realistic head that the benchmarks share: a 256 x 256 x 176 matrix, echoes every 4 ms."""

from __future__ import annotations

import time

from QSMLib.phantom import HeadPhantom, simulate_head


def realistic_head(echoes: int, voxel_size_mm: float, bipolar: bool = False) -> tuple[HeadPhantom, float]:
    """Simulate the benchmark head (``bipolar``: even echoes with a bipolar readout's phase error); returns the
    phantom and the seconds the simulation took."""
    echo_times = tuple(0.004 + 0.004 * n for n in range(echoes))
    fov_mm = (256.0 * voxel_size_mm, 256.0 * voxel_size_mm, 176.0 * voxel_size_mm)
    began = time.perf_counter()
    phantom = simulate_head(voxel_size_mm=(voxel_size_mm,) * 3, fov_mm=fov_mm, echo_times_s=echo_times,
                            bipolar=bipolar)
    return phantom, time.perf_counter() - began
