"""ROMEO-class quality-guided, path-based phase unwrapping.

ROMEO (Dymerska et al., "Phase unwrapping with a rapid opensource minimum
spanning tree algorithm (ROMEO)", MRM 2021;85:2294) gives every edge between
6-neighbours a quality from phase coherence, multi-echo phase-gradient
coherence and magnitude, and grows the unwrapped region from a seed, always
across the best edge next to it. Best-edge-first growth is Prim's algorithm:
the edges it uses form a maximum spanning tree of the edge qualities, and the
unwrapped phase of a voxel is its tree parent's plus the wrapped difference
between the two. Here the tree comes from scipy's compiled Kruskal
(:func:`scipy.sparse.csgraph.minimum_spanning_tree`) and the path sums are
accumulated level by level in breadth-first order, so no Python loop runs
over voxels. The tree spans the voxels with signal; noise, which ROMEO
reaches last anyway and whose order carries no information, is attached to
its nearest tissue afterwards (see :func:`romeo_unwrap_volume`).

Multi-echo data: one template echo is unwrapped spatially, the others
temporally (:mod:`QSMLib.unwrap.temporal`), as in ROMEO.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from .._parallel import for_each_slab
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from .._wrapping import exclude_non_finite, wrap_in_place
from ..contract import PhaseResult
from ..errors import QSMInputError
from .temporal import temporal_unwrap

#: Quality levels of the edge ordering (ROMEO uses 256 bins as well); the
#: level above the last is reserved for edges that do not exist.
_LEVELS = 255
_NO_EDGE = np.uint8(255)
#: Voxel quality below which a voxel is taken as noise (brain tissue scores
#: above 0.7, background noise about 0.01 with the default weights).
_SIGNAL_QUALITY = 0.05
_TWO_PI = np.float32(2.0 * np.pi)


def _pair_slices(axis: int, rows: Optional[slice] = None) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the voxels with a +1 neighbour along ``axis`` and of those neighbours.

    With ``rows`` (a slice with start and stop along axis 0), only the voxels
    of those rows: for ``axis`` 0 the rows of the lower voxels.
    """
    low = [slice(None)] * 3
    high = [slice(None)] * 3
    low[axis] = slice(0, -1)
    high[axis] = slice(1, None)
    if rows is not None:
        low[0] = rows
        high[0] = rows if axis else slice(rows.start + 1, rows.stop + 1)
    return tuple(low), tuple(high)


def edge_weights(
    phase: np.ndarray,
    *,
    magnitude: Optional[np.ndarray] = None,
    phase2: Optional[np.ndarray] = None,
    te_ratio: Optional[float] = None,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """ROMEO edge qualities between each voxel and its +1 neighbour per axis.

    Every factor ``c`` in [0, 1] enters as ``0.1 + 0.9 c`` so that no single
    factor vetoes an edge (as in ROMEO):

    - phase coherence ``1 - |wrap(phi_j - phi_i)| / pi``;
    - phase-gradient coherence (needs ``phase2``): ``max(0, 1 - |d - d2 *
      te_ratio|)`` with ``d, d2`` the wrapped differences of the two echoes;
      an edge whose gradient the second echo does not confirm is suspect;
    - magnitude coherence ``(min / max)^2`` of the two magnitudes;
    - magnitude level ``min(1, min / (0.5 M_ref))`` with ``M_ref`` the 99.9th
      percentile of the magnitude: noise has little signal.

    Parameters
    ----------
    phase : numpy.ndarray, shape (n0, n1, n2)
        Wrapped phase, radians.
    magnitude : numpy.ndarray, shape (n0, n1, n2), optional
        Magnitude of the same echo.
    phase2 : numpy.ndarray, shape (n0, n1, n2), optional
        Wrapped phase of a second echo.
    te_ratio : float, optional
        ``TE(phase) / TE(phase2)``; required with ``phase2``.
    mask : numpy.ndarray of bool, optional
        Edges touching a voxel outside get quality 0 (they are unwrapped last).

    Returns
    -------
    numpy.ndarray of float32, shape (3, n0, n1, n2)
        ``[a][i]`` is the quality in [0, 1] of the edge from voxel ``i`` to
        ``i + 1`` along axis ``a`` (0 on the last slice, where there is none).
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase2 is not None and te_ratio is None:
        raise QSMInputError("edge_weights needs te_ratio = TE(phase) / TE(phase2) together with phase2.")
    weights = np.zeros((3, *phase.shape), dtype=np.float32)
    reference = None
    if magnitude is not None:
        magnitude = np.asarray(magnitude, dtype=np.float32)
        sample = magnitude.ravel()[:: max(1, magnitude.size // 1_000_000)]
        reference = np.float32(0.5 * max(float(np.percentile(sample, 99.9)), 1e-30))

    def fill(axis: int, rows: slice) -> None:
        low, high = _pair_slices(axis, rows)
        step = wrap_in_place(phase[high] - phase[low])
        weight = np.abs(step)
        weight *= np.float32(-0.9 / np.pi)
        weight += np.float32(1.0)
        if phase2 is not None:
            mismatch = wrap_in_place(np.asarray(phase2[high], np.float32) - phase2[low])
            mismatch *= np.float32(te_ratio)
            mismatch -= step
            np.abs(mismatch, out=mismatch)
            np.clip(mismatch, 0.0, 1.0, out=mismatch)
            weight *= np.float32(1.0) - np.float32(0.9) * mismatch
        if reference is not None:
            small = np.minimum(magnitude[low], magnitude[high])
            large = np.maximum(magnitude[low], magnitude[high])
            coherence = small / np.maximum(large, np.float32(1e-30))
            coherence *= coherence
            weight *= np.float32(0.1) + np.float32(0.9) * coherence
            level = np.minimum(small / reference, np.float32(1.0))
            weight *= np.float32(0.1) + np.float32(0.9) * level
        if mask is not None:
            weight[~(mask[low] & mask[high])] = 0.0
        weights[axis][low] = weight

    # Every edge's weight depends on its two voxels only: slabs of rows run on all threads.
    for axis in range(3):
        for_each_slab(lambda rows, axis=axis: fill(axis, rows), phase.shape[0] - (axis == 0), phase[0].size)
    return weights


def voxel_quality(weights: np.ndarray) -> np.ndarray:
    """Mean quality of the (up to six) edges at each voxel, in [0, 1].

    Parameters
    ----------
    weights : numpy.ndarray, shape (3, n0, n1, n2)
        Output of :func:`edge_weights`.

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    shape = weights.shape[1:]
    quality = np.empty(shape, dtype=np.float32)

    # each voxel's sum takes its own edges, then those from its lower neighbours, axis by axis (the
    # order of a whole-volume sum, so slabs give the same bits); edges along axis 0 reach one row back
    def fill(rows: slice) -> None:
        total = weights[0][rows] + weights[1][rows]
        total += weights[2][rows]
        count = np.full(total.shape, 3.0, dtype=np.float32)
        first = 1 if rows.start == 0 else 0
        total[first:] += weights[0][rows.start + first - 1 : rows.stop - 1]
        count[first:] += 1.0
        if rows.stop == shape[0]:
            count[-1] -= 1.0
        total[:, 1:] += weights[1][rows][:, :-1]
        total[:, :, 1:] += weights[2][rows][:, :, :-1]
        count[:, 1:] += 1.0
        count[:, -1] -= 1.0
        count[:, :, 1:] += 1.0
        count[:, :, -1] -= 1.0
        np.divide(total, count, out=quality[rows])

    for_each_slab(fill, shape[0], shape[1] * shape[2])
    return quality


def _edge_levels(weights: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Quantised edge costs, node-major: ``[i, a]`` for the edge from voxel i along axis a.

    0 is the best edge, ``_LEVELS - 1`` the worst; ``_NO_EDGE`` where there is
    no edge or an end lies outside ``signal``.
    """
    shape = signal.shape
    row_voxels = shape[1] * shape[2]
    levels = np.empty((signal.size, 3), dtype=np.uint8)

    def fill(rows: slice) -> None:
        block = levels[rows.start * row_voxels : rows.stop * row_voxels]
        for axis in range(3):
            cost = np.float32(1.0) - weights[axis][rows]
            cost *= np.float32(_LEVELS - 1)
            np.rint(cost, out=cost)
            column = cost.astype(np.uint8)
            # an edge exists where both ends have signal (none beyond the volume's last row or column)
            low, high = _pair_slices(axis, rows if axis else slice(rows.start, min(rows.stop, shape[0] - 1)))
            inside = np.zeros(column.shape, dtype=bool)
            local_low = (slice(0, low[0].stop - rows.start), *low[1:])
            inside[local_low] = signal[low] & signal[high]
            column[~inside] = _NO_EDGE
            block[:, axis] = column.ravel()

    for_each_slab(fill, shape[0], row_voxels)
    return levels


def maximum_spanning_tree(levels: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Edges of a spanning forest that uses the best edges first (Kruskal).

    scipy's Kruskal sorts the stored edge values with a stable sort, which
    costs seconds for millions of edges unless they are already in order.
    Each edge is therefore stored in the row of its own "port" node, rows in
    order of edge quality: the port's first entry links it to one end of the
    edge (a fresh node, so always accepted), its second entry is the edge to
    the other end. Values are ascending in storage order, the sort is linear,
    and the forest keeps an edge exactly when Kruskal on the original graph
    would (ties in voxel order).

    Parameters
    ----------
    levels : numpy.ndarray of uint8, shape (n_voxels, 3)
        Quantised edge costs from :func:`_edge_levels` (lower is better).
    shape : sequence of 3 int
        Volume shape, for the neighbour offsets.

    Returns
    -------
    first, second : numpy.ndarray of int32
        Flat voxel indices of the forest edges' endpoints.
    """
    n_voxels = levels.shape[0]
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    flat_levels = levels.ravel()
    existing = np.flatnonzero(flat_levels != _NO_EDGE)
    n_edges = existing.size
    if n_voxels + n_edges >= 2**31:
        raise QSMInputError(f"A volume of {n_voxels} voxels is too large to unwrap in one piece: crop it.")
    # Stable radix sort of uint8, of the existing edges only (those between voxels with signal, a
    # fraction of three per voxel): ties stay in voxel order, so the result is deterministic.
    order = existing[np.argsort(flat_levels[existing], kind="stable")]
    del existing
    start = order // 3
    ends = np.empty((n_edges, 2), dtype=np.int32)
    ends[:, 0] = start
    ends[:, 1] = start + strides[order % 3]
    del order, start
    indptr = np.zeros(n_voxels + n_edges + 1, dtype=np.int64 if 2 * n_edges >= 2**31 else np.int32)
    indptr[n_voxels + 1 :] = np.arange(2, 2 * n_edges + 1, 2, dtype=indptr.dtype)
    data = np.arange(1, 2 * n_edges + 1, dtype=np.float64)
    # A copy: scipy compacts the index array of the result in place.
    graph = scipy.sparse.csr_matrix((data, ends.ravel().copy(), indptr), shape=(n_voxels + n_edges,) * 2)
    del data, indptr
    tree = minimum_spanning_tree(graph, overwrite=True)
    del graph
    # A port row keeps both entries exactly when its edge joined two trees.
    kept = np.diff(tree.indptr[n_voxels:]) == 2
    del tree
    return ends[kept, 0], ends[kept, 1]


def _forest_order(
    first: np.ndarray, second: np.ndarray, roots: np.ndarray, n_voxels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first order of a forest from its roots, and each voxel's parent (roots: themselves).

    One search from a virtual node joined to every root covers all trees.
    Voxels in no tree are left out of ``order``.
    """
    hub = np.full(roots.size, n_voxels, dtype=np.int32)
    graph = scipy.sparse.csr_matrix(
        (np.ones(first.size + roots.size, dtype=np.float64),
         (np.concatenate([first, hub]), np.concatenate([second, roots.astype(np.int32)]))),
        shape=(n_voxels + 1, n_voxels + 1),
    )
    order, predecessors = breadth_first_order(graph, n_voxels, directed=False, return_predecessors=True)
    parents = predecessors[:n_voxels].astype(np.int32)
    parents[roots] = roots
    return order[1:].astype(np.int32), parents


def unwrap_along_tree(wrapped: np.ndarray, order: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Integrate wrapped differences from the roots along tree paths.

    ``unwrapped[v] = unwrapped[parent[v]] + wrap(phi[v] - phi[parent[v]])``.
    In breadth-first order every parent comes before its children and the
    parents' positions never decrease, so the voxels split into consecutive
    blocks (the trees' depth levels) whose parents all lie in earlier
    blocks: each block is one vectorised step.

    Parameters
    ----------
    wrapped : numpy.ndarray of float32, flat
        Wrapped phase, radians.
    order : numpy.ndarray of int32
        Breadth-first order of the voxels to unwrap, roots first.
    parents : numpy.ndarray of int32, flat
        Tree parent of each voxel; roots point to themselves.

    Returns
    -------
    numpy.ndarray of float32, flat
        Unwrapped phase of the voxels in ``order`` (roots keep their wrapped
        value); other voxels keep their wrapped value.
    """
    position = np.zeros(wrapped.size, dtype=np.int32)
    position[order] = np.arange(order.size, dtype=np.int32)
    parent_position = position[parents[order]]
    del position
    ordered = wrapped[order]
    turns = np.rint((ordered[parent_position] - ordered) / _TWO_PI).astype(np.int32)
    n_roots = int(np.count_nonzero(parents[order] == order))
    # Past the roots (which point to themselves) the parents' positions never decrease.
    below = parent_position[n_roots:]
    start = stop = n_roots
    while stop < order.size:
        stop = n_roots + int(np.searchsorted(below, np.int32(stop), side="left"))
        if stop == start:
            raise QSMInputError("The unwrapping tree is not in breadth-first order; this is a bug, please report it.")
        turns[start:stop] += turns[parent_position[start:stop]]
        start = stop
    unwrapped = np.array(wrapped, dtype=np.float32, copy=True)
    unwrapped[order] = ordered + _TWO_PI * turns.astype(np.float32)
    return unwrapped


def _nearest_reference(unwrapped: np.ndarray, main: np.ndarray, block: int = 2) -> np.ndarray:
    """For every voxel, the unwrapped value of a ``main`` voxel near it.

    The search runs on blocks of ``block`` voxels per axis (an exact
    Euclidean distance transform of the full grid costs seconds): each block
    holding main voxels is represented by one of them, and every voxel takes
    the representative of the block nearest to its own block.
    """
    shape = main.shape
    padded_shape = [-(-n // block) * block for n in shape]
    padded = np.zeros(padded_shape, dtype=bool)
    padded[tuple(slice(0, n) for n in shape)] = main
    coarse = [n // block for n in padded_shape]
    cells = padded.reshape(coarse[0], block, coarse[1], block, coarse[2], block).transpose(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(*coarse, block**3)
    holds_main = cells.any(axis=-1)
    within = np.unravel_index(cells.argmax(axis=-1), (block,) * 3)
    corner = np.indices(coarse, dtype=np.intp) * block
    nearest = ndi.distance_transform_edt(~holds_main, return_distances=False, return_indices=True)
    position = tuple(np.minimum((corner[a] + within[a])[tuple(nearest)], shape[a] - 1) for a in range(3))
    value = unwrapped[position]
    # each voxel takes its block's value: one gather (three np.repeat copies cost 0.2 s at 256x256x176)
    return value[np.ix_(*(np.arange(n) // block for n in shape))]


def _attach_to_main(unwrapped: np.ndarray, labels: np.ndarray, main: int) -> np.ndarray:
    """Bring every voxel outside the main region to the turn closest to a nearby main voxel.

    Other signal regions (already consistent inside) move by one whole
    number of turns each, the median over the region; voxels without signal
    move individually. Returns the volume, changed in place.
    """
    outside = labels != main
    if not outside.any():
        return unwrapped
    turns = _nearest_reference(unwrapped, ~outside)
    turns -= unwrapped
    turns *= np.float32(0.5 / np.pi)
    np.rint(turns, out=turns)
    turns[~outside] = 0.0
    others = outside & (labels > 0)
    if others.any():
        region = labels[others]
        votes = turns[others]
        # Median vote per region: sort by (region, vote), take each group's middle.
        order = np.lexsort((votes, region))
        index, first, count = np.unique(region[order], return_index=True, return_counts=True)
        shifts = np.zeros(int(labels.max()) + 1, dtype=np.float32)
        shifts[index] = votes[order][first + count // 2]
        turns[others] = shifts[region]
    turns *= _TWO_PI
    unwrapped += turns
    return unwrapped


def _signal_voxels(quality: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """Voxels with signal: quality of at least ``_SIGNAL_QUALITY`` (inside ``mask``)."""
    threshold = min(_SIGNAL_QUALITY, 0.5 * float(quality.max()))
    signal = quality >= threshold
    if mask is not None and np.any(signal & mask):
        signal &= mask
    return signal


def romeo_unwrap_volume(
    phase: np.ndarray,
    *,
    magnitude: Optional[np.ndarray] = None,
    phase2: Optional[np.ndarray] = None,
    te_ratio: Optional[float] = None,
    mask: Optional[np.ndarray] = None,
    cancel: CancelToken = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unwrap one 3D phase volume along a maximum spanning tree of edge qualities.

    Voxels with signal (quality at least 0.05: everything but noise) are
    unwrapped along a maximum spanning forest of their edges, each connected
    region from its best voxel. Regions other than the largest then move by
    the whole number of turns that best matches their nearest voxels of the
    largest, and noise voxels take the turn closest to their nearest voxel
    of it: ROMEO also reaches them last, and their order carries no
    information (this keeps the tree to the voxels with signal, a fraction
    of a typical field of view).

    Parameters
    ----------
    phase : numpy.ndarray, shape (n0, n1, n2)
        Wrapped phase, radians.
    magnitude, phase2, te_ratio
        See :func:`edge_weights`.
    mask : numpy.ndarray of bool, optional
        Voxels outside are treated like noise (reached last); every voxel
        is unwrapped.
    cancel : callable or threading.Event, optional

    Returns
    -------
    unwrapped : numpy.ndarray of float32, shape (n0, n1, n2)
        Unwrapped phase; the seed (best voxel of the largest region) keeps
        its wrapped value.
    quality : numpy.ndarray of float32, shape (n0, n1, n2)
        :func:`voxel_quality` in [0, 1].
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim != 3 or min(phase.shape) < 2:
        raise QSMInputError(f"ROMEO unwraps 3D volumes with 2+ voxels per axis, got shape {phase.shape}.")
    if not np.all(np.isfinite(phase)):
        raise QSMInputError("The phase has NaN or infinite values: replace them (e.g. by 0) before unwrapping.")
    weights = edge_weights(phase, magnitude=magnitude, phase2=phase2, te_ratio=te_ratio, mask=mask)
    quality = voxel_quality(weights)
    signal = _signal_voxels(quality, mask)
    levels = _edge_levels(weights, signal)
    del weights
    check_cancel(cancel)
    first, second = maximum_spanning_tree(levels, phase.shape)
    del levels
    check_cancel(cancel)
    # Face-connected regions of the signal voxels are exactly the trees of the forest.
    labels, _ = ndi.label(signal)
    main = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    roots = _best_voxels(quality.ravel(), labels.ravel(), signal.ravel())
    order, parents = _forest_order(first, second, roots, phase.size)
    del first, second
    check_cancel(cancel)
    unwrapped = unwrap_along_tree(phase.ravel(), order, parents).reshape(phase.shape)
    del order, parents
    return _attach_to_main(unwrapped, labels, main), quality


def _best_voxels(quality: np.ndarray, labels: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Flat index of each region's best voxel (highest quality, first in voxel order), regions by label.

    Flat arrays of one volume; ``labels`` numbers the regions of ``signal`` from 1. No sort of the
    voxels: the regions' highest quality comes from one pass, and only voxels that reach it are
    ranked.
    """
    candidates = np.flatnonzero(signal)
    region = labels[candidates]
    value = quality[candidates]
    highest = np.full(int(region.max()) + 1, -np.inf, dtype=value.dtype)
    np.maximum.at(highest, region, value)
    at_highest = value == highest[region]
    _, first = np.unique(region[at_highest], return_index=True)
    return candidates[at_highest][first]


def _global_turns(difference: np.ndarray, where: np.ndarray) -> np.float32:
    """2 pi times the whole number of turns closest to the median of ``difference`` over ``where``."""
    values = difference[where] if np.any(where) else difference.ravel()
    return _TWO_PI * np.float32(np.rint(np.median(values) / _TWO_PI))


def romeo(
    phase: np.ndarray,
    magnitude: np.ndarray,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    *,
    mask: Optional[np.ndarray] = None,
    template_echo: int = 0,
    individual: bool = False,
    overwrite_phase: bool = False,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> PhaseResult:
    """ROMEO-class multi-echo unwrapping: one echo spatially, the rest in time.

    The template echo is unwrapped along a maximum spanning tree of edge
    qualities (:func:`romeo_unwrap_volume`, with the next echo for the
    phase-gradient coherence). Its global multiple of 2 pi is then chosen so
    that it agrees (median over good voxels) with the phase the wrapped
    difference to the next echo predicts at its echo time: after phase
    offset removal the phase is ``2 pi f TE``. The other echoes are unwrapped
    temporally (:func:`QSMLib.unwrap.temporal.temporal_unwrap`).

    Parameters
    ----------
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Wrapped phase, radians, with the echo-independent offset removed
        (e.g. MCPC-3D-S) for temporal unwrapping to be valid.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude.
    echo_times_s : sequence of float
        Echo times, seconds.
    voxel_size_mm : sequence of 3 float
        Unused (edges are between 6-neighbours whatever their spacing);
        accepted for the common unwrapping signature.
    mask : numpy.ndarray of bool, shape (n0, n1, n2), optional
        Voxels outside are treated like noise (reached last, see
        :func:`romeo_unwrap_volume`); all voxels are unwrapped. Voxels that
        are NaN or infinite in any echo are left out and returned as NaN
        (quality 0).
    template_echo : int
        Zero-based index of the echo unwrapped spatially (default the first:
        fewest wraps and most signal).
    individual : bool
        Unwrap every echo spatially on its own instead of temporally (for
        data whose phase offset was not removed); each echo's global 2 pi
        multiple is matched to its already unwrapped neighbour echo plus
        their wrapped difference (median over reliable voxels).
    overwrite_phase : bool
        Write the unwrapped phase into ``phase`` itself (when it is float32)
        instead of a new array, for callers that no longer need the input.
        Not with ``individual`` (which needs every echo's wrapped phase to
        the end).
    progress : callable(fraction, message), optional
    cancel : callable or threading.Event, optional

    Returns
    -------
    unwrapped : numpy.ndarray of float32, shape (echo, n0, n1, n2)
        Unwrapped phase, radians.
    maps : dict
        ``romeo_quality``: voxel quality in [0, 1] of the template echo's
        edges (high in reliable tissue, low in noise and at phase
        discontinuities), shape (n0, n1, n2).
        (The two come as a :class:`QSMLib.contract.PhaseResult`.)

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid
    opensource minimum spanning tree algorithm (ROMEO). MRM 2021;85:2294-2308.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> from QSMLib.phase import mcpc3ds
    >>> acq = scan.acquisition
    >>> offset_free = mcpc3ds(acq.phase, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm).phase
    >>> unwrapped, maps = romeo(offset_free, acq.magnitude, acq.echo_times_s, acq.voxel_size_mm)
    >>> sorted(maps), unwrapped.dtype
    (['romeo_quality'], dtype('float32'))
    """
    del voxel_size_mm
    times = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    n_echoes = np.shape(phase)[0]
    if np.ndim(phase) != 4 or np.shape(magnitude) != np.shape(phase) or times.size != n_echoes:
        raise QSMInputError(
            f"ROMEO needs phase and magnitude shaped (echo, n0, n1, n2) with one echo time per echo; got "
            f"{np.shape(phase)}, {np.shape(magnitude)} and {times.size} echo time(s)."
        )
    phase, magnitude, invalid = exclude_non_finite(phase, magnitude)
    if invalid.any():
        mask = ~invalid if mask is None else mask & ~invalid
    if not 0 <= template_echo < n_echoes:
        raise QSMInputError(f"template_echo must be an echo index from 0 to {n_echoes - 1}, got {template_echo}.")
    partner = template_echo + 1 if template_echo + 1 < n_echoes else template_echo - 1
    check_cancel(cancel)
    report(progress, 0.0, f"ROMEO: spatial unwrapping of echo {template_echo + 1}")
    template, quality = _unwrap_echo(phase, magnitude, times, template_echo, partner, mask, cancel)
    # Reliable voxels decide the global multiple of 2 pi (tissue scores above 0.7).
    good = quality >= min(0.5, float(np.percentile(quality, 75.0)))
    if mask is not None and np.any(good & mask):
        good &= mask
    if partner >= 0:
        hip = wrap_in_place(phase[partner] - phase[template_echo])
        predicted = hip * np.float32(times[template_echo] / (times[partner] - times[template_echo]))
        template += _global_turns(predicted - template, good)
    else:
        template -= _global_turns(template, good)
    report(progress, 0.7 if not individual else 1.0 / n_echoes, "ROMEO: unwrapping the other echoes")
    if individual:
        unwrapped = np.empty_like(phase)
        unwrapped[template_echo] = template
        outward = [(e, e - 1) for e in range(template_echo + 1, n_echoes)]
        outward += [(e, e + 1) for e in range(template_echo - 1, -1, -1)]
        for done, (echo, neighbour) in enumerate(outward, start=2):
            check_cancel(cancel)
            volume, _ = _unwrap_echo(phase, magnitude, times, echo, neighbour, mask, cancel)
            # Offset-free of any assumption: the step from the neighbouring echo is its wrapped difference.
            expected = unwrapped[neighbour] + wrap_in_place(phase[echo] - phase[neighbour])
            volume += _global_turns(expected - volume, good)
            unwrapped[echo] = volume
            report(progress, done / n_echoes, f"ROMEO: echo {echo + 1} unwrapped")
    else:
        unwrapped = temporal_unwrap(phase, magnitude, times, template, template_echo,
                                    out=phase if overwrite_phase else None, cancel=cancel)
    unwrapped[:, invalid] = np.nan
    quality[invalid] = 0.0
    report(progress, 1.0, "ROMEO unwrapping done")
    return PhaseResult(unwrapped, {"romeo_quality": quality})


def _unwrap_echo(
    phase: np.ndarray,
    magnitude: np.ndarray,
    times: np.ndarray,
    echo: int,
    partner: int,
    mask: Optional[np.ndarray],
    cancel: CancelToken,
) -> tuple[np.ndarray, np.ndarray]:
    if partner < 0:
        return romeo_unwrap_volume(phase[echo], magnitude=magnitude[echo], mask=mask, cancel=cancel)
    return romeo_unwrap_volume(
        phase[echo], magnitude=magnitude[echo], phase2=phase[partner],
        te_ratio=float(times[echo] / times[partner]), mask=mask, cancel=cancel,
    )
