"""Phase preparation: scaling, phase-offset removal, coil combination and bipolar correction.

Registries used by the pipeline (before unwrapping):
``OFFSET_METHODS``: ``method(phase, magnitude, echo_times_s, voxel_size_mm, *,
progress=None, cancel=None, **params)`` -> phase (echo, n0, n1, n2) with the
echo-independent offset removed, or (phase, dict of extra maps).
``BIPOLAR_METHODS``: same signature; run only for bipolar acquisitions.

- ``mcpc3ds`` (offset): MCPC-3D-S, Eckstein et al. MRM 2018.
- ``linear`` (bipolar): even-echo error, constant plus linear in space, from
  echo triples (Li et al. 2015; Eckstein et al. 2018).
"""

import numpy as np

from .bipolar import bipolar_score, estimate_bipolar_error, linear_bipolar_correction, looks_bipolar
from .coils import combine_coils_mcpc3ds
from .offsets import mcpc3ds


def no_correction(phase: np.ndarray, magnitude: np.ndarray, echo_times_s, voxel_size_mm, **_) -> np.ndarray:
    """Leave the phase as it is."""
    return phase


OFFSET_METHODS = {"none": no_correction, "mcpc3ds": mcpc3ds}
BIPOLAR_METHODS = {"none": no_correction, "linear": linear_bipolar_correction}

__all__ = [
    "BIPOLAR_METHODS",
    "OFFSET_METHODS",
    "bipolar_score",
    "combine_coils_mcpc3ds",
    "estimate_bipolar_error",
    "linear_bipolar_correction",
    "looks_bipolar",
    "mcpc3ds",
    "no_correction",
]
