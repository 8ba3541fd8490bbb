"""Phase preparation: scaling, phase-offset removal, coil combination and bipolar correction.

Registries used by the pipeline (before unwrapping):
``OFFSET_METHODS``: ``method(phase, magnitude, echo_times_s, voxel_size_mm, *,
progress=None, cancel=None, **params)`` -> :class:`QSMLib.contract.PhaseResult`
(phase (echo, n0, n1, n2) with the echo-independent offset removed, and maps).
``BIPOLAR_METHODS``: same signature; run only for bipolar acquisitions.

- ``mcpc3ds`` (offset): MCPC-3D-S, Eckstein et al. MRM 2018.
- ``linear`` (bipolar): even-echo error, constant plus linear in space, from
  echo triples (Li et al. 2015; Eckstein et al. 2018).
"""

from typing import Sequence

import numpy as np

from ..contract import Method, PhaseResult
from .bipolar import bipolar_score, estimate_bipolar_error, linear_bipolar_correction, looks_bipolar
from .coils import combine_coils_mcpc3ds
from .offsets import mcpc3ds


def no_correction(
    phase: np.ndarray, magnitude: np.ndarray, echo_times_s: Sequence[float], voxel_size_mm: Sequence[float]
) -> PhaseResult:
    """Leave the phase as it is."""
    return PhaseResult(phase)


OFFSET_METHODS = {"none": Method(no_correction), "mcpc3ds": Method(mcpc3ds, inputs=("overwrite_phase",))}
BIPOLAR_METHODS = {
    "none": Method(no_correction), "linear": Method(linear_bipolar_correction, inputs=("overwrite_phase",)),
}

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
