"""Checks of the data and of a susceptibility map that need no ground truth.

Echo order: a gradient echo's magnitude decays with the echo time (T2*), so
over the head it falls from each echo to the next. Echoes handed over out of
order (files sorted as echo-1, echo-10, echo-2, or reversed) break that, and
nothing else in the reconstruction says so: :func:`magnitude_decay`. Phase
echoes out of order behind magnitudes in order are told by how the phase
evolves: the frequency that two echoes' phase difference gives is the same
for every pair of echoes, and a pair taken backwards in time gives it
negated: :func:`phase_evolution`.

Sign: the phase's handedness is not stored in the images, and scanners differ
(some GE data are left-handed). Read with the wrong sign, every field and
every susceptibility comes out negated, and nothing in the reconstruction
fails. The map itself tells: in a brain the strongly paramagnetic voxels
(veins, iron-rich nuclei, haemorrhage: up to +0.3..+0.6 ppm) outnumber and
outreach the strongly diamagnetic ones (white matter tracts, -0.05..-0.1
ppm; calcifications are rare and small), so the distribution of chi deep in
the brain has a long positive tail. :func:`chi_tail_asymmetry` measures it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ._morphology import erode

#: The largest rise of the head's median magnitude from one echo to the next that passes as noise (a fraction).
#: On the suite's heads and slabs, the test heads and the real in-vivo crop the median fell by 8-24 % per echo.
ECHO_RISE_ALLOWED = 0.05
#: The band of slopes between two echo pairs' frequencies that passes as echoes in order (:func:`phase_evolution`).
#: On 34 suite heads, slabs and stress heads (3-12 echoes, 0.7-2 mm, 1.5-7 T, monopolar and bipolar, uneven
#: spacing, no shim) and the real in-vivo crop the slopes in order were 0.93-1.00 (the lowest with uneven spacing).
#: On fifteen of them every reordering tried short of a reversal of evenly spaced echoes gave one outside the band
#: (all reorderings of three or four echoes; of more, every swap of neighbours, every echo moved to the end, and
#: the echo-1, echo-10, echo-2 sort).
PHASE_SLOPE_BAND = (0.6, 1.6)
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


def _sampled(echoes: np.ndarray) -> np.ndarray:
    """Every second voxel along each spatial axis (the echo checks need no more)."""
    return np.asarray(echoes)[:, ::2, ::2, ::2]


def _head_samples(magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The sampled magnitude, the head on it (the first echo above a fifth of its 99th percentile) and that
    percentile."""
    sampled = _sampled(magnitude)
    bright = float(np.percentile(sampled[0], 99.0))
    return sampled, sampled[0] > 0.2 * bright, bright


def magnitude_decay(magnitude: np.ndarray) -> dict[str, Any]:
    """The median magnitude of each echo over the head, relative to the first, and its largest rise.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, x, y, z)
        In the order of the echo times.

    Returns
    -------
    dict
        ``relative_median`` (one per echo, the first 1), ``largest_rise`` (the
        largest ratio of an echo's median to the previous one's, less 1) and
        ``rise_after_echo`` (1-based: the echo after which it rises most).
        The head is the voxels of the first echo above a fifth of its 99th
        percentile, on every second voxel along each axis.
    """
    sampled, head, _ = _head_samples(magnitude)
    if not head.any():  # no signal (e.g. an all-zero magnitude): nothing to judge
        return {"relative_median": [], "largest_rise": 0.0, "rise_after_echo": 0}
    medians = np.array([np.median(echo[head]) for echo in sampled], np.float64)
    steps = medians[1:] / np.maximum(medians[:-1], np.finfo(np.float64).tiny) - 1.0
    worst = int(np.argmax(steps)) if steps.size else 0
    return {"relative_median": [round(float(m), 3) for m in medians / medians[0]],
            "largest_rise": round(float(steps[worst]), 3) if steps.size else 0.0, "rise_after_echo": worst + 1}


def phase_evolution(magnitude: np.ndarray, phase: np.ndarray, echo_times_s: Sequence[float],
                    max_phase_rad: float = np.pi / 2) -> dict[str, Any]:
    """Whether the phase evolves with the echo times as a field does: each echo pair's frequency against another's.

    Two echoes' phase difference over their echo time difference is the
    field (Hz) for every pair of echoes taken forwards in time, and the
    field negated for a pair taken backwards: so, over the head, one
    pair's frequency against another's has a slope of 1 when the echoes
    are in order, and a slope far from 1 (often negative) when a phase
    echo sits out of its place. The even echoes of a bipolar readout carry
    an offset of their own (a constant and a ramp along the readout), the
    same in every pair of the same echo parity: consecutive pairs are
    compared with the first pair of their parity and pairs two echoes apart
    with the first of them, and the second pair with the first with and
    without a constant and a linear ramp over the grid fitted out (the
    slope nearer 1 counts). A reversal of evenly spaced echoes keeps every
    slope at 1: :func:`magnitude_decay` and :func:`chi_tail_asymmetry`
    tell that one.

    Parameters
    ----------
    magnitude, phase : numpy.ndarray, shape (echo, x, y, z)
        Magnitude (any scale) and phase (radians, wrapped or not), in the order of ``echo_times_s``.
    echo_times_s : sequence of float
        Echo times (s), increasing.
    max_phase_rad : float
        A voxel counts where both pairs' frequencies turn the phase by less than this over the longest echo
        time difference compared, so that neither pair wraps (radians).

    Returns
    -------
    dict
        ``comparisons``: one per comparison, ``[step, reference_pair, pair, slope]`` (pairs 1-based:
        pair k holds echoes k and k + step), ``out_of_order`` (a slope outside :data:`PHASE_SLOPE_BAND`) and
        ``failing`` (the first comparison outside, or None).
        Empty comparisons below three echoes. The head is the voxels of the first echo above a fifth of
        its 99th percentile, on every second voxel along each axis.
    """
    times = np.asarray(echo_times_s, np.float64)
    n = times.size
    result: dict[str, Any] = {"comparisons": [], "out_of_order": False, "failing": None}
    sampled_magnitude, head, bright = _head_samples(magnitude)
    if n < 3 or not head.any():
        return result
    # on the first echo's scale: the weights multiply four magnitudes, which in float32 underflow for the
    # 1e-5-scaled magnitudes some scanners store
    signal = (sampled_magnitude[:, head] / bright * np.exp(1j * _sampled(phase)[:, head])).astype(np.complex64)
    # a bipolar readout's even-echo offset: a constant and a ramp along the grid, to fit out between pairs of
    # other parities
    offset_terms = [np.ones(int(head.sum()))] + [
        (axis - axis.mean()) / max(float(np.ptp(axis)), 1.0) for axis in np.nonzero(head)]
    for step in (1, 2):
        gaps = times[step:] - times[:-step]
        products = signal[step:] * np.conj(signal[:-step])
        frequency_hz = np.angle(products) / (2 * np.pi * gaps[:, None])
        weight = np.abs(products)
        for pair in range(1, gaps.size):
            same_parity = pair % 2 if step == 1 else 0
            references = [same_parity] if same_parity != pair else []
            if step == 1 and pair == 1:
                references.append(0)
            for reference in references:
                # both pairs small: a pair that spans more time than its echo times say wraps, and a wrapped
                # frequency can land near zero in the other pair
                usable = np.maximum(np.abs(frequency_hz[reference]), np.abs(frequency_hz[pair])) * 2 * np.pi * \
                    gaps.max() < max_phase_rad
                crossed = (pair - reference) % 2 == 1 and step == 1
                voxel_weight = weight[reference] * weight[pair] * usable
                # between parities, the slope with the offset fitted out or without, whichever is nearer 1: the
                # fit takes the field's own ramp too, which on a small crop leaves little but noise
                slopes = [_weighted_slope(frequency_hz[pair], frequency_hz[reference], voxel_weight, terms)
                          for terms in ([[], offset_terms] if crossed else [[]])]
                slopes = [value for value in slopes if value is not None]
                if not slopes:
                    continue
                slope = min(slopes, key=lambda value: abs(value - 1))
                comparison = [step, reference + 1, pair + 1, round(slope, 3)]
                result["comparisons"].append(comparison)
                if not PHASE_SLOPE_BAND[0] < slope < PHASE_SLOPE_BAND[1] and not result["out_of_order"]:
                    result.update(out_of_order=True, failing=comparison)
    return result


def _weighted_slope(values: np.ndarray, reference: np.ndarray, weight: np.ndarray,
                    other_terms: Sequence[np.ndarray]) -> Optional[float]:
    """The weighted least-squares coefficient of ``reference`` in ``values`` (with ``other_terms`` fitted too);
    None where the voxels that count hold no information."""
    design = np.stack([reference, *other_terms], axis=1) * np.sqrt(weight)[:, None]
    if not np.any(design[:, 0]):
        return None
    coefficients, _, rank, _ = np.linalg.lstsq(design, values * np.sqrt(weight), rcond=None)
    return float(coefficients[0]) if rank == design.shape[1] else None
