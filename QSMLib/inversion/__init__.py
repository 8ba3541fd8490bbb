"""Dipole inversion methods, by registry name.

Every method: ``method(local_field_hz, mask, voxel_size_mm, *, b0_direction,
b0_tesla, progress=None, cancel=None, **params)`` returning susceptibility
in ppm (zero outside ``mask``, not yet referenced). It may also accept
``field_weight`` (echo-fit reliability) or ``magnitude`` (echo, n0, n1, n2).
"""

from ..dipole import dipole_kernel, forward_field
from .l2 import l2
from .medi import medi
from .rts import rts
from .tkd import tkd
from .tv import nltv, tv

METHODS = {"tkd": tkd, "l2": l2, "tv": tv, "nltv": nltv, "rts": rts, "medi": medi}

__all__ = ["METHODS", "dipole_kernel", "forward_field", "l2", "medi", "nltv", "rts", "tkd", "tv"]
