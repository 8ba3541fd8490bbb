"""Checks of a susceptibility map that need no ground truth.

The phase's handedness is not stored in the images, and scanners differ
(some GE data are left-handed): read with the wrong sign, every field and
every susceptibility comes out negated, and nothing in the reconstruction
fails. The map itself tells: in a brain the strongly paramagnetic voxels
(veins, iron-rich nuclei, haemorrhage: up to +0.3..+0.6 ppm) outnumber and
outreach the strongly diamagnetic ones (white matter tracts, -0.05..-0.1
ppm; calcifications are rare and small), so the distribution of chi deep in
the brain has a long positive tail. :func:`chi_tail_asymmetry` measures it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._morphology import erode

#: Voxels within this distance of the mask's surface are left out (mm): the edge carries the largest errors of
#: background removal and the inversion, of either sign.
DEPTH_MM = 6.0
#: The tails: this percentile and its mirror (%). 0.5 % of a brain is about 6 mL, more than a typical
#: calcification.
TAIL_PERCENT = 0.5
#: Below this volume of deep voxels (mL) the map is not judged: a crop may hold no veins or nuclei.
MIN_VOLUME_ML = 150.0
#: The asymmetry below which a map is called sign-reversed. On the validation suite's maps (thirteen whole heads
#: and a held-out one, default pipeline) the asymmetry was +0.69..+1.07, and so -0.69..-1.07 negated; the
#: truths measured +0.74..+0.96.
REVERSED_BELOW = -0.3


def chi_tail_asymmetry(chi_ppm: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float]) -> dict[str, Any]:
    """How much longer the positive tail of chi is than the negative one, deep in the mask.

    Parameters
    ----------
    chi_ppm : numpy.ndarray, shape (x, y, z)
        Susceptibility (ppm), any reference.
    mask : numpy.ndarray of bool, shape (x, y, z)
        Where chi is reported (the brain).
    voxel_size_mm : sequence of 3 float

    Returns
    -------
    dict
        ``deep_volume_ml`` (the voxels deeper than :data:`DEPTH_MM`) and
        ``checked`` (False below :data:`MIN_VOLUME_ML`). When checked:
        ``tail_asymmetry``, ``log(positive_tail_ppm / negative_tail_ppm)``
        (positive for a brain's map, about 0 for a symmetric distribution,
        negative for a negated map), where the tails are
        ``p[100 - q] - median`` and ``median - p[q]`` (ppm) with ``q`` =
        :data:`TAIL_PERCENT`; ``median_ppm``; and ``reversed`` (asymmetry
        below :data:`REVERSED_BELOW`).
    """
    deep = erode(np.asarray(mask, bool), DEPTH_MM, voxel_size_mm)
    volume_ml = float(np.count_nonzero(deep) * np.prod(voxel_size_mm) / 1000.0)
    result: dict[str, Any] = {"deep_volume_ml": round(volume_ml, 1), "depth_mm": DEPTH_MM, "checked": False}
    if volume_ml < MIN_VOLUME_ML:
        return result
    low, median, high = np.percentile(np.asarray(chi_ppm)[deep], [TAIL_PERCENT, 50.0, 100.0 - TAIL_PERCENT])
    if not median - low > 0 or not high - median > 0:
        return result  # a constant map (e.g. all zero) has no tails to compare
    asymmetry = float(np.log((high - median) / (median - low)))
    result.update(checked=True, tail_asymmetry=round(asymmetry, 3), median_ppm=round(float(median), 4),
                  negative_tail_ppm=round(float(median - low), 4), positive_tail_ppm=round(float(high - median), 4),
                  reversed=asymmetry < REVERSED_BELOW)
    return result
