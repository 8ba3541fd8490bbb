"""Time and peak memory of simulating the 1 mm head phantom.

Run as ``python benchmarks/bench_phantom.py [voxel_mm]`` (default 1 mm,
supersample 2, 5 echoes). Peak memory is the process's maximum resident set
size, which includes the Python interpreter and imported modules.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from QSMLib.phantom import simulate_head


def main(voxel_mm: float = 1.0) -> None:
    """Simulate the head phantom once and print wall time and peak memory."""
    start = time.perf_counter()
    phantom = simulate_head(voxel_size_mm=(voxel_mm, voxel_mm, voxel_mm), supersample=2)
    elapsed = time.perf_counter() - start
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
    shape = phantom.acquisition.magnitude.shape
    brain = phantom.brain_mask
    local_rms = float(np.sqrt(np.mean(phantom.local_field_hz[brain] ** 2)))
    print(f"simulate_head voxel {voxel_mm} mm, shape {shape}: {elapsed:.1f} s, peak RSS {peak_gb:.2f} GB")
    print(f"brain voxels {int(brain.sum())}, local field RMS {local_rms:.2f} Hz")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
