"""Voxel-wise work split into slabs that run on several threads.

NumPy releases the GIL inside its loops over large arrays, so independent
slabs of a volume (ranges of array axis 0) computed in threads use several
cores for element-wise work, which NumPy alone does on one. The result of a
voxel-wise computation does not depend on how the volume is cut.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ._threads import thread_count

#: Fewer rows per slab than this are not worth a thread.
_MIN_ROWS = 8


def for_each_slab(work: Callable[[slice], None], rows: int) -> None:
    """Call ``work(slab)`` for slabs (slices of ``range(rows)``) covering it once, in parallel threads.

    ``work`` must touch only its slab of every array it writes. The number
    of slabs follows :func:`QSMLib._threads.thread_count`; exceptions from
    ``work`` propagate.

    Examples
    --------
    >>> import numpy as np
    >>> volume = np.arange(24.0).reshape(6, 4)
    >>> doubled = np.empty_like(volume)
    >>> def double(slab):
    ...     np.multiply(volume[slab], 2, out=doubled[slab])
    >>> for_each_slab(double, volume.shape[0])
    >>> bool(np.array_equal(doubled, 2 * volume))
    True
    """
    parts = max(1, min(thread_count(), rows // _MIN_ROWS))
    if parts == 1:
        work(slice(0, rows))
        return
    bounds = [rows * part // parts for part in range(parts + 1)]
    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(work, [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]))
