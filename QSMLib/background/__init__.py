"""Background field removal methods, by registry name.

Every method: ``method(total_field_hz, mask, voxel_size_mm, *, progress=None,
cancel=None, **params)`` returning ``(local_field_hz, valid_mask)``. It may
also accept ``b0_direction``, ``b0_tesla``, ``field_weight`` (echo-fit
reliability in [0, 1]) or ``magnitude``; the pipeline passes those it names.
Methods that need no erosion (``pdf``, ``lbv``) offer ``erosion_mm`` (default
0), which erodes the mask before solving; ``vsharp`` always erodes by its
smallest sphere.
"""

from .lbv import lbv
from .pdf import pdf
from .vsharp import vsharp

METHODS = {"vsharp": vsharp, "pdf": pdf, "lbv": lbv}

__all__ = ["METHODS", "lbv", "pdf", "vsharp"]
