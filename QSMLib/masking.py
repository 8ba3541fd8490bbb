"""Brain masks: automatic from the magnitude, or given by the user."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse
import scipy.sparse.csgraph

from ._morphology import dilate, erode, fill_holes, large_pieces, largest_component, otsu_threshold
from ._operators import root_sum_of_squares
from ._progress import CancelToken, ProgressCallback, check_cancel, report
from .contract import Method
from .dipole import faces_cutting_mask
from .errors import QSMInputError


def _opening(mask: np.ndarray, radius_mm: float, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Opening (erode, keep the largest component, dilate) computed on a grid of at most ~2 mm voxels.

    The opening only needs to cut bridges a few mm wide, so a coarser grid
    is enough and saves most of the time of exact distance transforms on
    sub-millimetre data; the caller intersects the result with the full
    resolution mask, which keeps its boundary exact.
    """
    steps = [max(1, int(2.0 // float(v))) for v in voxel_size_mm]
    coarse = mask[:: steps[0], :: steps[1], :: steps[2]]
    coarse_voxel = [float(v) * n for v, n in zip(voxel_size_mm, steps)]
    # One coarse voxel of extra dilation so that blocky upsampling never trims the fine boundary.
    opened = dilate(largest_component(erode(coarse, radius_mm, coarse_voxel)), radius_mm + max(coarse_voxel),
                    coarse_voxel)
    for axis, step in enumerate(steps):
        opened = np.repeat(opened, step, axis=axis)
    return opened[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


#: Radius (mm) of the opening that cuts the magnitude mask's thin bridges to scalp and vessels.
OPENING_MM = 4.0
#: Radius (mm) of the wider opening that finds large pieces of tissue joined to the brain: the face and the
#: skull base's soft tissue touch the brain through bridges up to about 10 mm wide on some heads, which the
#: 4 mm opening keeps. What it cuts off is dropped when larger than ``APPENDAGE_ML`` (:func:`_drop_appendages`).
APPENDAGE_OPENING_MM = 6.0
#: Pieces cut off by the wider opening larger than this (ml) are dropped; smaller ones are kept. On the
#: development heads (the suite's, the small warped head, six scratch heads) the pieces were 0-8 ml (vessels,
#: and on twelve suite heads a 3-8 ml piece at the field of view's bottom face: the brainstem where the field of
#: view cuts it) or 448 and 694 ml (the face of two heads; 383 and 646 ml on two held-out heads). Dropping
#: every piece (a plain 6 mm opening) measured 25.90 against 25.79 % chi NRMSE on the fourteen suite heads:
#: without the brainstem at the bottom face TFI no longer sees the field of view cut the mask along B0, and
#: its shell beyond that face thins from 72 to 12 mm (bipolar_oblique_9echo 18.94 against 18.17 %).
APPENDAGE_ML = 50.0


def _drop_appendages(
    mask: np.ndarray, opening_mm: float, largest_ml: float, voxel_size_mm: Sequence[float]
) -> np.ndarray:
    """``mask`` less the pieces of over ``largest_ml`` ml that an opening of ``opening_mm`` cuts off it."""
    cut_off = mask & ~largest_component(_opening(mask, opening_mm, voxel_size_mm) & mask)
    large = large_pieces(cut_off, largest_ml, voxel_size_mm)
    return largest_component(mask & ~large) if large.any() else mask


def magnitude_mask(
    magnitude: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    threshold_scale: float = 1.0,
    opening_mm: float = OPENING_MM,
    appendage_opening_mm: float = APPENDAGE_OPENING_MM,
    appendage_ml: float = APPENDAGE_ML,
    erosion_mm: float = 0.0,
    invalid: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Automatic brain mask from multi-echo magnitude.

    Root-sum-of-squares over echoes, smoothed, thresholded at Otsu's level
    (times ``threshold_scale``); an opening of ``opening_mm`` cuts thin
    bridges to scalp and vessels and the largest component is kept; a wider
    opening (``appendage_opening_mm``) finds large pieces joined to the brain
    through wider bridges, such as the face, and those over
    ``appendage_ml`` go; holes are filled, and the result optionally eroded
    by ``erosion_mm``.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2)
        Magnitude images.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    threshold_scale : float
        Multiplies Otsu's threshold (lower keeps more tissue).
    opening_mm : float
        Radius of the morphological opening, mm (:data:`OPENING_MM`): tissue
        joined to the brain only through bridges narrower than twice this is
        cut off.
    appendage_opening_mm : float
        Radius of the wider opening, mm (:data:`APPENDAGE_OPENING_MM`); none
        when it is not above ``opening_mm`` (0 turns it off).
    appendage_ml : float
        The wider opening's pieces larger than this go, ml
        (:data:`APPENDAGE_ML`).
    erosion_mm : float
        Final erosion, mm (background removal erodes further as it needs).
    invalid : numpy.ndarray of bool, optional
        Voxels to exclude (e.g. non-finite input).

    Returns
    -------
    numpy.ndarray of bool, shape (n0, n1, n2)

    References
    ----------
    Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man Cybern
    1979;9:62-66.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> mask = magnitude_mask(scan.acquisition.magnitude, (1.0, 1.0, 1.0))
    >>> mask.dtype, bool((mask == scan.brain_mask).mean() > 0.95)
    (dtype('bool'), True)
    """
    check_cancel(cancel)
    magnitude = np.asarray(magnitude, dtype=np.float32)
    combined = root_sum_of_squares(magnitude)
    sigma_voxels = [1.0 / float(v) for v in voxel_size_mm]
    smooth = ndi.gaussian_filter(combined, sigma=sigma_voxels)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        raise QSMInputError("Magnitude is zero everywhere: cannot build a mask.")
    ceiling = float(np.percentile(positive, 99.5))
    mask = smooth > threshold_scale * otsu_threshold(np.minimum(positive, ceiling))
    if invalid is not None:
        mask &= ~invalid
    report(progress, 0.3, "Mask: threshold")
    check_cancel(cancel)
    mask = largest_component(_opening(mask, opening_mm, voxel_size_mm) & mask)
    if appendage_opening_mm > opening_mm:
        mask = _drop_appendages(mask, appendage_opening_mm, appendage_ml, voxel_size_mm)
    report(progress, 0.7, "Mask: fill holes")
    check_cancel(cancel)
    return _finalise(
        fill_holes(mask), invalid, erosion_mm, voxel_size_mm, progress,
        "The automatic mask is empty: the magnitude has no clear tissue/background contrast. "
        "Give a brain mask (--mask).",
    )


def _finalise(
    mask: np.ndarray,
    invalid: np.ndarray | None,
    erosion_mm: float,
    voxel_size_mm: Sequence[float],
    progress: ProgressCallback,
    empty_message: str,
) -> np.ndarray:
    """Exclude invalid voxels, erode, and refuse an empty result with ``empty_message``."""
    if invalid is not None:
        mask &= ~invalid
    mask = erode(mask, erosion_mm, voxel_size_mm)
    if not mask.any():
        raise QSMInputError(empty_message)
    report(progress, 1.0, "Mask done")
    return mask


def phase_quality_mask(
    magnitude: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    romeo_quality: np.ndarray | None = None,
    fit_residual_rad: np.ndarray | None = None,
    total_field_hz: np.ndarray | None = None,
    echo_times_s: Sequence[float] | None = None,
    quality_threshold: float = 0.3,
    residual_threshold_rad: float = 0.5,
    jump_fraction: float = 0.5,
    threshold_scale: float = 1.0,
    opening_mm: float = OPENING_MM,
    appendage_opening_mm: float = APPENDAGE_OPENING_MM,
    appendage_ml: float = APPENDAGE_ML,
    erosion_mm: float = 0.0,
    invalid: np.ndarray | None = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> np.ndarray:
    """Brain mask from magnitude and phase quality (the consensus automatic mask).

    The magnitude mask (:func:`magnitude_mask`, no erosion) keeps only
    voxels whose phase is reliable: ROMEO voxel quality at least
    ``quality_threshold`` and echo-fit residual at most
    ``residual_threshold_rad`` (each test only when its map is given). Holes
    are filled (deep, dark but enclosed tissue such as veins stays in), the
    largest component is kept and the result optionally eroded. Without
    either map this is the magnitude mask.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2)
        Magnitude images.
    voxel_size_mm : sequence of 3 float
        Voxel size per array axis.
    romeo_quality : numpy.ndarray, shape (n0, n1, n2), optional
        Voxel quality in [0, 1] from ROMEO unwrapping (pipeline map).
    fit_residual_rad : numpy.ndarray, shape (n0, n1, n2), optional
        RMS residual of the echo fit, radians (pipeline map).
    total_field_hz : numpy.ndarray, shape (n0, n1, n2), optional
        Total field of the echo fit, Hz (pipeline input). With
        ``echo_times_s``, regions cut off from the brain by field jumps larger
        than ``jump_fraction / TE_1`` are removed (:func:`field_jump_islands`):
        unwrapping errors at the brain's edge that the fit residual cannot see.
    echo_times_s : sequence of float, optional
        Echo times in seconds (pipeline input).
    quality_threshold : float
        Minimum ROMEO quality, [0, 1].
    residual_threshold_rad : float
        Maximum echo-fit residual, radians.
    jump_fraction : float
        Largest credible field step between neighbours as a fraction of
        ``1 / TE_1`` (a whole unwrapping error at the first echo): 0.5.
    threshold_scale, opening_mm, appendage_opening_mm, appendage_ml
        Passed to :func:`magnitude_mask`.
    erosion_mm : float
        Final erosion, mm.
    invalid : numpy.ndarray of bool, optional
        Voxels to exclude (e.g. non-finite input).

    Returns
    -------
    numpy.ndarray of bool, shape (n0, n1, n2)

    References
    ----------
    Dymerska B, et al. MRM 2021;85:2294 (ROMEO quality map as a mask);
    QSM Consensus Organization Committee. Recommended implementation of
    quantitative susceptibility mapping for clinical research in the brain:
    a consensus of the ISMRM electro-magnetic tissue properties study group.
    MRM 2024;91:1834-1862.

    Examples
    --------
    >>> from QSMLib.phantom.sphere import sphere_scan
    >>> scan = sphere_scan()  # a paramagnetic sphere, 4 echoes, 1 mm
    >>> from QSMLib.fieldmap import weighted_linear
    >>> acq = scan.acquisition
    >>> _, maps = weighted_linear(acq.phase, acq.magnitude, acq.echo_times_s)
    >>> mask = phase_quality_mask(acq.magnitude, acq.voxel_size_mm, fit_residual_rad=maps["fit_residual_rad"])
    >>> bool(mask.sum() > 0.9 * scan.brain_mask.sum())
    True
    """
    mask = magnitude_mask(
        magnitude, voxel_size_mm, threshold_scale=threshold_scale, opening_mm=opening_mm,
        appendage_opening_mm=appendage_opening_mm, appendage_ml=appendage_ml, erosion_mm=0.0,
        invalid=invalid, progress=None, cancel=cancel,
    )
    report(progress, 0.5, "Mask: phase quality")
    shape = mask.shape
    for name, values in (("romeo_quality", romeo_quality), ("fit_residual_rad", fit_residual_rad)):
        if values is not None and np.shape(values) != shape:
            raise QSMInputError(f"The {name} map has shape {np.shape(values)}, the images {shape}: they must match.")
    if romeo_quality is not None:
        mask &= np.asarray(romeo_quality) >= quality_threshold
    if fit_residual_rad is not None:
        mask &= np.asarray(fit_residual_rad) <= residual_threshold_rad
    check_cancel(cancel)
    mask = largest_component(fill_holes(mask))
    if total_field_hz is not None and echo_times_s is not None:
        if np.shape(total_field_hz) != shape:
            raise QSMInputError(f"The total field has shape {np.shape(total_field_hz)}, the images {shape}: they must "
                                "match.")
        first_echo_s = float(np.min(np.asarray(echo_times_s, dtype=np.float64)))
        mask &= ~field_jump_islands(total_field_hz, mask, float(jump_fraction) / first_echo_s)
    return _finalise(
        mask, invalid, erosion_mm, voxel_size_mm, progress,
        "The phase-quality mask is empty: the phase is unreliable everywhere at these thresholds. Lower "
        "quality_threshold / raise residual_threshold_rad, use the 'magnitude' mask, or give a mask (--mask).",
    )


def field_jump_islands(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    jump_hz: float,
) -> np.ndarray:
    """Voxels cut off from the mask's main region by jumps of the field larger than ``jump_hz``.

    Inside tissue the field changes by a few Hz per voxel, near air by tens;
    a voxel whose phase was unwrapped with one cycle too many or too few (in
    the template echo, so the error is consistent across echoes and leaves
    no fit residual) is off by ``1 / TE`` of that echo, hundreds of Hz.
    Edges between face neighbours of the mask whose field differs by more
    than ``jump_hz`` are cut; every connected region except the largest is
    returned, so islands of wrong field at the brain's edge leave the mask
    whole instead of voxel by voxel. With ``jump_hz = 0.5 / TE_1`` a cut
    edge is one whose phase at the first echo steps by more than pi: where
    the true field does that (steep fields next to air at high field),
    spatial unwrapping is ambiguous (Itoh's condition), so a region that
    only such edges join to the brain is not trustworthy either.

    Parameters
    ----------
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field in Hz.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Current mask.
    jump_hz : float
        Largest credible field difference between neighbours, Hz.

    Returns
    -------
    numpy.ndarray of bool, shape (n0, n1, n2)
        Mask voxels outside the main region.

    Examples
    --------
    >>> import numpy as np
    >>> field = np.zeros((10, 10, 10), np.float32)
    >>> field[0:2, 0:2, 0:2] = 250.0  # an island unwrapped one cycle off (TE 4 ms)
    >>> int(field_jump_islands(field, np.ones(field.shape, bool), 125.0).sum())
    8
    """
    mask = np.asarray(mask, dtype=bool)
    field = np.asarray(total_field_hz, dtype=np.float32)
    pairs = []
    for axis in range(3):
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(0, -1), slice(1, None)
        pairs.append((tuple(low), tuple(high)))
    # Every edge between two voxels that touch no cut edge is kept, so the face-connected regions of those
    # voxels (an image labelling, fast) are whole in the graph; only the few voxels at cut edges need a graph,
    # in which each region is one node: the same components as the graph of every voxel (0.21 against 0.64-0.79
    # s at 256x256x176; should two regions tie for the largest, either may be kept, as before).
    kept, at_cut = [], np.zeros(mask.shape, dtype=bool)
    for low, high in pairs:
        both = mask[low] & mask[high]
        steady = both & (np.abs(field[low] - field[high]) <= np.float32(jump_hz))
        cut = both & ~steady
        at_cut[low] |= cut
        at_cut[high] |= cut
        kept.append(steady)
    node, regions = ndi.label(mask & ~at_cut)
    node = node.astype(np.int64, copy=False)
    n_cut = int(at_cut.sum())
    node[at_cut] = regions + 1 + np.arange(n_cut)
    rows, cols = [], []
    for (low, high), steady in zip(pairs, kept):
        linked = steady & (at_cut[low] | at_cut[high])
        rows.append(node[low][linked])
        cols.append(node[high][linked])
    n_nodes = regions + 1 + n_cut
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    graph = scipy.sparse.coo_matrix(
        (np.ones(rows_all.size, dtype=np.int8), (rows_all, cols_all)), shape=(n_nodes, n_nodes))
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # voxels per component (node 0, the voxels outside the mask, counts none)
    voxels = np.bincount(node[mask], minlength=n_nodes)
    size = np.bincount(component, weights=voxels)
    main = int(np.argmax(size))
    return mask & (component[node] != main)


def validate_user_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Check a user mask against the image shape and binarise it (non-zero = inside)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise QSMInputError(
            f"The mask has shape {mask.shape} but the images have {tuple(shape)}: "
            "give a mask on the magnitude/phase grid."
        )
    binary = np.isfinite(mask) & (mask != 0) if mask.dtype.kind == "f" else mask != 0
    if not binary.any():
        raise QSMInputError("The mask is empty (no non-zero voxel): give a mask that covers the brain.")
    return binary


def coverage_along_b0(
    mask: np.ndarray, voxel_size_mm: Sequence[float], b0_direction: Sequence[float]
) -> dict[str, object]:
    """How the field of view covers the brain along B0: where its faces cut the mask.

    Looks at each grid axis within 60 degrees of B0 (as TFI's shell does).
    A face of the grid cuts the brain where the mask comes within two voxels
    of it with a cross-section of at least
    :data:`~QSMLib.dipole.CUT_FACE_SHARE` of the mask's largest one along
    that axis (not a brainstem cut off below the cerebellum;
    :func:`~QSMLib.dipole.faces_cutting_mask`). An automatic mask can hold
    the neck where the field of view cuts it, so one cut face is common on
    whole heads; the field of view covers a slab when it cuts the brain at
    both ends of an axis.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Brain mask.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 in array axes.

    Returns
    -------
    dict
        ``extent_mm``: the mask's extent along the axis nearest B0, mm;
        ``cut_faces``: the faces that cut the brain, as ``"axis 2 low"``
        (index 0) or ``"axis 2 high"``; ``slab``: whether both faces of an
        axis cut it.

    Examples
    --------
    >>> import numpy as np
    >>> slab = np.zeros((20, 20, 10), bool)
    >>> slab[5:15, 5:15, :] = True
    >>> coverage_along_b0(slab, (1.0, 1.0, 2.0), (0.0, 0.0, 1.0))
    {'extent_mm': 20.0, 'cut_faces': ['axis 2 low', 'axis 2 high'], 'slab': True}
    """
    mask = np.asarray(mask, dtype=bool)
    nearest = int(np.argmax(np.abs(np.asarray(b0_direction, dtype=np.float64))))
    extent_mm, cut_faces, slab = 0.0, [], False
    occupied = np.flatnonzero(mask.any(axis=tuple(other for other in range(3) if other != nearest)))
    if occupied.size:
        extent_mm = round((int(occupied[-1]) - int(occupied[0]) + 1) * float(voxel_size_mm[nearest]), 2)
    for axis, (low, high) in faces_cutting_mask(mask, b0_direction).items():
        cut_faces += [f"axis {axis} {name}" for name, cut in (("low", low), ("high", high)) if cut]
        slab = slab or (low and high)
    return {"extent_mm": extent_mm, "cut_faces": cut_faces, "slab": slab}


#: Automatic mask methods by registry name: ``method(magnitude, voxel_size_mm,
#: *, invalid=None, progress=None, cancel=None, **params)`` -> bool mask; each
#: entry declares the maps of earlier stages it takes (e.g. ``fit_residual_rad``).
METHODS = {
    "magnitude": Method(magnitude_mask, inputs=("invalid",)),
    "phase_quality": Method(phase_quality_mask, inputs=(
        "invalid", "romeo_quality", "fit_residual_rad", "total_field_hz", "echo_times_s")),
}
