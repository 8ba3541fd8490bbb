"""Background field removal methods, by registry name.

Every method: ``method(total_field_hz, mask, voxel_size_mm, *, progress=None,
cancel=None, **params)`` returning a :class:`QSMLib.contract.BackgroundResult`
(local field in Hz, the mask it is valid on, parameters chosen from the
data). Each registry entry declares the pipeline inputs it takes beyond that
(``b0_direction``, ``b0_tesla``, ``field_weight`` = echo-fit reliability in
[0, 1], ``magnitude``).
``pdf`` and ``lbv`` offer ``erosion_mm``, which erodes the mask before
solving: 0 by default for ``pdf``; for ``lbv`` 4 mm when the mask is the
user's brain mask and 0 when it is the pipeline's automatic one (its
docstring gives the measurements). ``vsharp`` always erodes by its smallest
sphere.
"""

from ..contract import Method
from .ismv import ismv
from .lbv import lbv
from .pdf import pdf
from .resharp import resharp
from .vsharp import vsharp

METHODS = {
    "vsharp": Method(vsharp),
    "pdf": Method(pdf, inputs=("b0_direction", "field_weight")),
    "lbv": Method(lbv, inputs=("mask_source",)),
    "resharp": Method(resharp),
    "ismv": Method(ismv, inputs=("device",)),
}

__all__ = ["METHODS", "ismv", "lbv", "pdf", "resharp", "vsharp"]
