"""Phase unwrapping methods, by registry name.

Every method: ``method(phase, magnitude, echo_times_s, voxel_size_mm, *,
mask=None, progress=None, cancel=None, **params)`` with arrays shaped
(echo, n0, n1, n2), returning a :class:`QSMLib.contract.PhaseResult`: the
unwrapped phase (radians) and maps to keep (e.g. a quality map).

- ``romeo``: quality-guided, path-based (exact) spatial unwrapping of one
  echo plus temporal unwrapping of the others; keeps ``romeo_quality``.
- ``laplacian``: FFT-based, robust and fast, but alters values near strong
  gradients and leaves each echo up to a constant.
"""

from ..contract import Method
from .laplacian import laplacian
from .romeo import romeo
from .temporal import temporal_unwrap

# Both accept the brain mask when one is known before unwrapping (never a user parameter).
METHODS = {"laplacian": Method(laplacian, inputs=("mask",)), "romeo": Method(romeo, inputs=("mask", "overwrite_phase"))}

__all__ = ["METHODS", "laplacian", "romeo", "temporal_unwrap"]
