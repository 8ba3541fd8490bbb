"""Phase preparation: scaling, phase-offset removal and bipolar correction.

Registries used by the pipeline (before unwrapping):
``OFFSET_METHODS``: ``method(phase, magnitude, echo_times_s, voxel_size_mm, *,
progress=None, cancel=None, **params)`` -> phase (echo, n0, n1, n2) with the
echo-independent offset removed, or (phase, dict of extra maps).
``BIPOLAR_METHODS``: same signature; run only for bipolar acquisitions.
"""

import numpy as np


def no_correction(phase: np.ndarray, magnitude: np.ndarray, echo_times_s, voxel_size_mm, **_) -> np.ndarray:
    """Leave the phase as it is."""
    return phase


OFFSET_METHODS = {"none": no_correction}
BIPOLAR_METHODS = {"none": no_correction}

__all__ = ["BIPOLAR_METHODS", "OFFSET_METHODS", "no_correction"]
