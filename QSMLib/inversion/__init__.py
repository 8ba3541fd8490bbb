"""Dipole inversion methods, by registry name.

Every method: ``method(local_field_hz, mask, voxel_size_mm, *, b0_direction,
b0_tesla, progress=None, cancel=None, **params)`` returning a
:class:`QSMLib.contract.InversionResult`: susceptibility in ppm (zero outside
``mask``, not yet referenced) and the parameters it chose from the data.
Each registry entry declares the pipeline inputs it takes (e.g.
``field_weight``, the echo-fit reliability, or ``magnitude`` (echo, n0, n1, n2)).
"""

from ..contract import Method
from ..dipole import dipole_kernel, forward_field
from .l2 import l2
from .medi import medi
from .rts import rts
from .tfi import sstv, tfi
from .tkd import tkd
from .tv import nltv, tv

_GEOMETRY = ("b0_direction", "b0_tesla")

METHODS = {
    "tkd": Method(tkd, inputs=_GEOMETRY),
    "l2": Method(l2, inputs=(*_GEOMETRY, "field_sd_hz")),
    "tv": Method(tv, inputs=(*_GEOMETRY, "field_weight", "field_sd_hz", "device")),
    "nltv": Method(nltv, inputs=(*_GEOMETRY, "field_weight", "field_sd_hz", "echo_times_s", "magnitude")),
    "rts": Method(rts, inputs=(*_GEOMETRY, "field_sd_hz")),
    "medi": Method(medi, inputs=(*_GEOMETRY, "field_weight", "field_sd_hz", "magnitude", "echo_times_s")),
    # single step: inverts the total field, the pipeline skips background removal
    "tfi": Method(tfi, inputs=(*_GEOMETRY, "field_weight", "field_sd_hz", "magnitude", "background_removed",
                                "acquired_voxel_size_mm", "device"),
                  takes_total_field=True),
    "sstv": Method(sstv, inputs=(*_GEOMETRY, "field_weight", "field_sd_hz", "magnitude", "device"),
                   takes_total_field=True),
}

__all__ = ["METHODS", "dipole_kernel", "forward_field", "l2", "medi", "nltv", "rts", "sstv", "tfi", "tkd", "tv"]
