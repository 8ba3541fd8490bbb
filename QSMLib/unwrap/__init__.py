"""Phase unwrapping methods, by registry name.

Every method: ``method(phase, magnitude, echo_times_s, voxel_size_mm, *,
mask=None, progress=None, cancel=None, **params)`` with arrays shaped
(echo, n0, n1, n2), returning the unwrapped phase (radians) or a tuple
(unwrapped phase, dict of extra maps to keep, e.g. a quality map).
"""

from .laplacian import laplacian

METHODS = {"laplacian": laplacian}

__all__ = ["METHODS", "laplacian"]
