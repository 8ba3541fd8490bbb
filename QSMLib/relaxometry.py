"""R2* and T2* maps from multi-echo magnitude.

Registry ``METHODS``: ``method(magnitude, echo_times_s, *, mask=None,
progress=None, cancel=None, **params)`` -> dict of maps (``r2star`` in 1/s,
``t2star`` in s). ``"none"`` computes nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def no_relaxometry(magnitude: np.ndarray, echo_times_s: Sequence[float], **_) -> dict[str, np.ndarray]:
    """Compute no relaxation map."""
    return {}


METHODS = {"none": no_relaxometry}
