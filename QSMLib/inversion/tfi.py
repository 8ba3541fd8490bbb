"""Total field inversion, TFI (Liu et al., MRM 2017;78:303), with a TV prior solved by ADMM.

Background removal and dipole inversion are one problem: the total field
inside the mask is the field of every susceptibility source, inside the mask
(tissue) and outside it (air, bone, scalp). TFI estimates both at once,

    min_chi  1/2 || W (D chi - f) ||^2 + lambda || omega grad chi ||_1,

with ``chi`` on the mask's bounding box grown by a shell of candidate
background sources, ``f`` the total field, ``W`` the field reliability on the
mask (zero outside: no field is measured there) and ``omega`` the weight of
the total variation: outside the mask ``outside_weight``; inside it 0 at the
magnitude's edges and 1 elsewhere, the gradient mask of MEDI that Liu et al.
use in TFI's prior, so that the borders of iron-rich nuclei (dark in the
magnitude) are not smoothed away. Voxels whose field the model does not
explain lose weight as the iterations go (MERIT, as in MEDI).

Liu et al. minimise the same kind of functional by Gauss-Newton and
conjugate gradients, where a preconditioner that scales the outside
susceptibility up (it is ~100 times larger than the tissue's) is what makes
the method converge in practice. Here the functional is split as in FANSI
(Milovic et al., MRM 2018): ``y = D chi`` and ``z = grad chi``; the ``chi``
update is diagonal in k-space, the ``z`` update a per-voxel soft threshold
(which carries ``omega``) and the ``y`` update a per-voxel weighted average.
No step depends on the scale of the outside sources, so no preconditioner
is needed, and one iteration costs what one iteration of linear TV costs.
Because no separate background removal runs, no voxel of the mask is
eroded away and errors of a background removal step do not propagate.

Near the brain's surface the outside sources can also explain part of the
tissue's field (given the exact local field, TFI left free to place outside
sources measured 25.9 % chi NRMSE on a 1 mm suite head, against 12.9 % when
told there are none). So the reported chi is a weighted mean of TFI's and
that of a second solve of the same ADMM (:func:`blend_estimates`: TFI's share
is ``TFI_SHARE``, 0.5, in detail finer than 8 mm, up to 0.8 where SS-TV's
finest detail shows more noise than TFI's, and ``TFI_COARSE_SHARE``, 0.2, in
the coarser), single-step TV (SS-TV, after Chatnuntawech et al., NMR Biomed 2017): its data
are the total field filtered by the spherical mean value (SMV) operator ``S``
(the voxel less its ball's mean) on the voxels whose ball lies in the mask,
where ``S f = S D chi`` holds exactly for the tissue's chi because ``S``
removes every field that is harmonic in the ball, as the outside sources'
field is. It needs no outside sources, at the cost of the low spatial
frequencies and of the data within a radius of the edge.
(Where the field was simulated with a dipole kernel sampled on a grid that
B0 is oblique to, the background is not harmonic near Nyquist; TFI's
outside sources are then found on a frame of the whole field of view and
refined to match that ripple, and the solve takes the field less their
field: see ``_ripple_test`` and ``_without_kernel_ripple``.)
The two estimates err differently, and their mean is better than either: on
the twelve validation suite cases (the pipeline's total fields) chi NRMSE
32.9 / 48.6 % mean / worst on the six tuning cases and 31.5 / 37.0 % on the
six held-out ones, against 38.7 / 54.3 % and 36.0 / 43.8 % for TFI alone and
35.9 / 52.7 % and 34.2 / 41.8 % for SS-TV alone (worst deep grey matter ROI
error 11.4 / 11.0 ppb, TFI alone 11.2 / 13.8, SS-TV alone 14.4 / 20.7). Since stop 30, with the kernel
chosen for B0 oblique to the grid (the ``kernel`` parameter), 32.5 / 48.6 % and 30.3 / 36.7 %; since stop
31, with MCPC-3D-S taking out the phase offset's curvature, 32.0 / 48.5 % and 30.3 / 36.7 %. Since stop
32 TFI's share is 0.4 (it was 0.5): with in-vivo texture in the brain's susceptibility (suite case
``qsmforward_textured_1p06mm``) TFI's outside sources take up the tissue's coarse detail; 32.1 / 48.3 % and
30.3 / 36.8 %, the textured head 28.8 -> 27.3 % (worst ROI error 14.5 -> 12.2 ppb). Since stop 33 the share
differs between coarse and fine detail (``TFI_COARSE_SHARE``): see its comment for the measurements.
Since stop 49, on a whole head, both solves end with a Bregman step: they continue with a share of the
field their data terms left unexplained added back to their data, which returns detail the prior took
(``bregman_gain``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .. import _backend, _fft
from .._backend import Device, resolve_device
from .._morphology import erode
from .._operators import (
    ball_interior,
    conjugate_gradient,
    data_weight,
    from_frame,
    gradient,
    gradient_eigenvalues,
    masked_smoothing,
    mean_voxel_mm,
    sphere_kernel,
    to_frame,
)
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..contract import InversionResult
from ..dipole import axes_along_b0, dipole_kernel, even_dipole_kernel, faces_cutting_mask
from ..errors import QSMInputError
from ..units import hz_to_ppm
from ._regularization import (
    MODEL_ERROR_FRACTION,
    estimate_edges,
    field_noise,
    free_edges,
    merit_weight,
    tv_regularization,
)
from .tv import admm_chi_step, admm_data_step, admm_gradient_step, linear_update_terms, relative_change

# coarse-grid CG iterations of the background sources' start (TFI's pdf_iterations), then full-grid ones
PDF_ITERATIONS = 30
FINE_ITERATIONS = 8
# ... and more full-grid ones where the field carries the sampled kernel's ripple (:func:`_ripple_test`): 60
# since stop 50, 30 before (measured: ``kernel`` in :func:`tfi`'s docstring; README, stop 50)
RIPPLE_ITERATIONS = 60
# TFI's automatic lambda is this times linear TV's rule: whole pipeline on the six suite cases, chi NRMSE
# 0.4-1.5 points lower on every case than with the TV rule itself (mean 39.3 against 40.3 %), worst deep
# grey matter ROI error 22.3 against 25.5 ppb; 2x was as good on the two noisiest cases and 0.5-0.7x worse.
# Checked again with the TFI/SS-TV blend (stop 34, fourteen suite cases, SS-TV's lambda following): factors
# 1.0 / 1.5 / 2.0 gave mean chi NRMSE 29.92 / 29.99 / 30.51 %, mean worst ROI error 7.20 / 6.92 / 7.58 ppb.
# Again at stop 39 (TFI's second pass running): 1.2 / 1.5 / 1.8 / 2.2 gave 27.69 / 27.50 / 27.49 / 27.67 % (worst
# 45.7 / 45.6 / 45.6 / 45.7 %), mean worst ROI error 6.55 / 6.17 / 5.92 / 5.79 ppb, XSIM 0.654 / 0.667 / 0.677 /
# 0.685, HFEN 18.91 / 19.05 / 19.29 / 19.72 %; beyond 1.8 the qsm-forward heads lose NRMSE (textured head 25.6 /
# 26.0 / 26.6 % at 1.5 / 1.8 / 2.2) and HFEN. SS-TV alone (the fast preset) follows: 1.5 -> 1.8 took it from
# 34.81 / 53.5 % to 34.50 / 52.2 %, 10.26 -> 10.06 ppb. Stop 46, the other-subject heads (WARPED_CASES) given an
# in-vivo-like texture: every textured head measured lower NRMSE at 1.3 than at 1.8 (README, stop 46), so 1.3 with
# 0.05 of the magnitude's edges (EDGE_FRACTIONS): fourteen heads 28.48 / 42.54 % against 29.76 / 44.75 % (mean /
# worst), XSIM 0.654 against 0.644; the four textured held-out own heads 35.89 against 37.81 % mean.
AUTO_LAMBDA_FACTOR = 1.3
# ... and this much higher again when the magnitude's edges are left free (:func:`free_edges`):
# the edges carry no penalty, so the rest of the brain takes more. Measured with edge fraction 0.15, whole
# pipeline: worst deep grey matter ROI error 14.5 against 18.4 ppb on the noisiest suite case and 8.3 against
# 10.7 at 7 T, mean chi NRMSE equal; 2x no better. (The same edges in linear TV after iSMV, the fast
# preset, cost 3-4 NRMSE points on the three smallest suite cases for ROI errors of 17.5-19.9 against
# 18.2-22.7 ppb: not used there.)
EDGE_LAMBDA_FACTOR = 1.5
#: TFI's automatic share of the magnitude's gradient components left free of the prior (:func:`free_edges`), as
#: (voxel size mm, share) points, interpolated. 0.15 at every size until stop 39, chosen before the second pass freed
#: chi's own edges and before lambda rose to 1.8x. Fourteen suite heads (0.7-2 mm), whole pipeline, 0.1 / 0.15 / 0.2:
#: chi NRMSE mean 25.97 / 27.49 / 29.11 % (worst 43.7 / 45.6 / 47.1 %), mean worst ROI error 5.57 / 5.92 / 6.91 ppb
#: (worst 10.3 / 10.6 / 10.8), HFEN 18.30 / 19.29 / 20.23 %, XSIM 0.703 / 0.677 / 0.648; 0.1 lowered NRMSE on 13
#: heads, the textured one equal. At 3 mm 0.1 was worse on two of three test heads (the project's piecewise-constant
#: phantom 38.9 -> 49.5 %, the small_axial crop 56.9 -> 57.8 %; small_qsmforward 42.6 -> 40.2 %): a tissue border
#: takes a larger share of coarser voxels. SS-TV alone (the fast preset) keeps 0.15. Stop 45, the suite recorded in
#: k-space, 0.025 / 0.05 / 0.1: 27.14 / 26.80 / 27.47 % mean (worst 37.15 / 37.14 / 38.12 %), 6.66 / 6.40 / 6.38 ppb;
#: 0.05 lost on both heads with in-vivo-like texture (26.01 -> 27.02 %, held-out 30.89 -> 31.42 %), so 0.1 stayed.
#: Stop 46, four more textured heads (our own simulator's): 0.05 lowered NRMSE on all four (36.12 -> 34.83 % mean);
#: with lambda 1.3x the qsm-forward textured heads no longer lose (26.01 -> 26.00 %, held-out 30.89 -> 30.56 %).
EDGE_FRACTIONS = ((2.0, 0.05), (3.0, 0.15))
#: Share (about; the edge weight is a ramp) of a first estimate's chi gradient components whose edges a second
#: pass leaves free too (:func:`~QSMLib.inversion._regularization.estimate_edges`); 0 runs one pass.
CHI_EDGE_FRACTION = 0.1
#: TFI's tolerance in the first of two passes, as a multiple of its own: that pass only finds chi's edges and
#: the start of the second, which runs to the full tolerance. On the fourteen suite heads 2x measured 27.50
#: against 27.21 % mean chi NRMSE, 6.17 against 6.23 ppb mean worst ROI error, and took the 256x256x176
#: benchmark head's inversion from 17 to 14 s (first-pass iterations 44 -> 33).
FIRST_PASS_TOLERANCE_FACTOR = 2.0
# MERIT every this many ADMM iterations, at this multiple of the residual's SD: chosen on the six suite
# cases (the whole pipeline's total fields); the measurements are under the ``merit_every`` parameter
MERIT_EVERY = 5
MERIT_FACTOR = 5.0
# the shell of background sources around the mask's box, mm: as accurate as 16 mm on the suite, on a smaller
# frame (the measurements are under the ``margin_mm`` parameter)
MARGIN_MM = 12.0
# ... and beyond a face where the field of view cuts the mask along B0 (see tfi's cut_margin_mm)
CUT_MARGIN_MM = 72.0
# TFI's chi is averaged with that of a single-step TV solve from the SMV-filtered total field (SS-TV), whose
# ball has this radius in voxels (the cube root of the voxel's volume), within this range of mm, and whose
# lambda is this times TFI's (the measurements are under the ``smv_radius_mm`` parameter)
SMV_RADIUS_VOXELS = 4.0
SMV_RADIUS_RANGE_MM = (4.0, 6.0)
SMV_MIN_RADIUS_VOXELS = 1.5
SMV_LAMBDA_FACTOR = 0.15
# TFI's share of the reported chi, SS-TV's the rest, in the detail finer than COARSE_SIGMA_MM (TFI_SHARE)
# and in the coarser (TFI_COARSE_SHARE): see :func:`blend_estimates`. With in-vivo texture in the brain's
# susceptibility TFI's outside sources take up the tissue's coarse detail (blobs of 20-40 mm, 20-30 ppb), which
# SS-TV, with no outside sources, does not, while in the fine detail TFI, which has data up to the mask's edge,
# is the better. Measured on the thirteen suite cases that run both solves (whole pipeline, fine share fixed):
# 0.5 / 0.2 / 8 mm mean chi NRMSE 30.35 % against 30.55 with one share of 0.4 for all detail (stop 32), worst
# 47.9 against 48.3 %, the textured head (qsmforward_textured_1p06mm) 26.5 % and a worst ROI error of 8.5 ppb
# against 27.3 % and 12.2 ppb, the SNR-20 head 42.3 % / 11.9 ppb against 43.5 % / 11.0; the largest loss
# +0.6 points (bipolar_oblique_9echo). 4 and 16 mm measured 30.39 and 30.37 %; a coarse share of 0.1 or 0.3
# and a fine one of 0.4 or 0.6 30.27-30.84 %; TFI's share raised in the coarse detail instead (0.5-0.7 coarse,
# 0.2-0.3 fine) 31.0-32.3 %, the textured head 27.7-32.0 %.
TFI_SHARE = 0.5
TFI_COARSE_SHARE = 0.2
COARSE_SIGMA_MM = 8.0
# ... unless SS-TV's finest detail (finer than FINE_SIGMA_MM) carries more energy than TFI's: both see the same
# tissue, so the excess is noise, which SS-TV's SMV filter amplifies. TFI's fine share then rises linearly from
# TFI_SHARE at the low end of NOISY_DETAIL_RATIO to MAX_TFI_SHARE at its high end. The ratio measured 0.86-1.04
# on the suite's heads at SNR 50-200 and 1.07-1.13 on the textured and the oblique qsm-forward heads (no change
# there), 1.50 on the SNR-20 head (42.3 -> 39.9 %, share 0.8), and on two scratch heads outside the suite,
# qsm-forward at peak SNR 25 and a 1 mm suite head at SNR 30: 1.25 and 1.16, 26.5 -> 25.5 % and 30.4 -> 29.6 %
# (worst ROI error 5.3 -> 4.7 and 9.2 -> 8.1 ppb). All three noisy heads measured their lowest NRMSE at a fine
# share of 0.8 among 0.3-0.8; the range was set with the three in view.
FINE_SIGMA_MM = 2.0
NOISY_DETAIL_RATIO = (1.1, 1.2)
MAX_TFI_SHARE = 0.8
#: ``lambda`` of SS-TV alone (:func:`sstv`) per linear TV's noise-proportional rule on the filtered field: 0.15 times
#: TFI's factor of stop 39 (1.8), as measured for the fast preset then; stop 46 lowered TFI's alone.
SSTV_LAMBDA_FACTOR = 0.27
# Where more than this share of the mask lies within the SMV radius of faces where the field of view cuts the
# mask (a crop, a slab: the suite's slabs 7-19 %, its whole heads at most 0.2 %), or where the field of view cuts
# it at both ends along B0 (a slab: :func:`~QSMLib.dipole.faces_cutting_mask`), SS-TV has no data near those
# faces and none of the low spatial frequencies a slab's thin axis needs: it contributes only its fine detail
# (TFI keeps all of the coarse), faded in from none within CUT_FACE_FADE[0] SMV radii of those faces to its
# share from CUT_FACE_FADE[1] radii (:func:`cut_face_fade`). Before stop 48 SS-TV did not run there. On eight
# slabs (README, stop 48) chi NRMSE 27.73 / 38.52 % mean / worst then, 26.16 / 35.25 % now; faded in over 1-3
# radii 26.34 / 35.86 %, over 2-4 26.56 / 36.27 %; not faded (the coarse detail TFI's too) 27.08 / 36.06 %, but the
# substantia nigra 74.6 ppb low at a 40 mm slab's face.
MAX_CUT_SHARE = 0.1
CUT_FACE_FADE = (0.0, 2.0)
#: The share of the residual field that a Bregman step adds back to both solves' data on a whole head
#: (``bregman_gain``, where the measurements are).
BREGMAN_GAIN = 0.3
#: Where the ADMM is over-relaxed (``relaxation`` above 1, a choice left to the user), the automatic tolerance is
#: this times plain ADMM's: with relaxation 1.8 the solves then stop about where plain ADMM stops, in 38-49 % fewer
#: iterations (20 whole suite heads, chi NRMSE 29.66 / 41.93 -> 29.70 / 41.72 % mean / worst), but eight slabs
#: lost 0.2-1.4 points and the project's 2 mm phantom 1.5-2.9, so plain ADMM stays the default (README, stop 61).
RELAXED_TOLERANCE_FACTOR = 2.5
# the automatic stopping tolerance per mm of voxel size, and its largest value: finer grids need more ADMM
# iterations for the same detail (the measurements are under the ``tolerance`` parameter)
TOLERANCE_PER_MM = 0.005
MAX_AUTO_TOLERANCE = 0.01
# Given a local field (``background_removed``: ``qsm run --local-field``), TFI is linear TV with MERIT and the
# second pass, and these replace the tolerance per mm and the automatic lambda's model-error floor
# (:func:`~QSMLib.inversion._regularization.effective_noise`, 0.07), which were chosen for the total field.
# Ten suite heads, the exact local field and the true mask, chi NRMSE mean / worst %, default before ->
# these: 15.95 / 20.98 -> 14.74 / 20.12 (lower on 9, aniso_tilted_1x1x2 19.12 -> 19.53); with 0.25 Hz white
# noise 21.31 / 32.50 -> 20.85 / 32.89 (lower on 8); with the echo fit's thermal noise (no weights) 22.88 /
# 57.16 -> 22.65 / 61.97 (lower on 8; the SNR-20 1.5 mm head is the worst either way); README, stop 53.
LOCAL_TOLERANCE_PER_MM = 0.0025
LOCAL_MODEL_ERROR_FRACTION = 0.04
# Given a local field, where its noise per voxel (ppm) exceeds this many times the model-error floor (0.04 of
# its RMS), lambda grows by the excess ratio: the noise-proportional rule's best lambda rises faster than the
# noise once the noise swamps the field's own detail. On the exact local field plus white noise of 1 and 2 Hz
# (ratio 12-20) on four 1 mm 3 T suite heads the rule measured 43-78 % chi NRMSE against 30-49 % at 2.5 times
# its lambda; the thermally noisy 1.5 mm head (ratio 15.9) 61.97 % against 44.76 at 2 times. The other suite
# heads, exact or with 0.25 Hz white or thermal noise, have ratios of at most 8, and the 1.5-2 mm heads that
# pass 6 (0.25 Hz white noise at 1.5 T) measured best at 1-1.4 times (README, stop 54).
LOCAL_NOISE_RATIO_KNEE = 6.0


def tfi(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    field_weight: Optional[np.ndarray] = None,
    field_sd_hz: Optional[np.ndarray] = None,
    magnitude: Optional[np.ndarray] = None,
    background_removed: bool = False,
    acquired_voxel_size_mm: Optional[Sequence[float]] = None,
    regularization: Union[float, str] = "auto",
    edge_fraction: Optional[float] = None,
    chi_edge_fraction: float = CHI_EDGE_FRACTION,
    outside_weight: float = 0.1,
    margin_mm: float = MARGIN_MM,
    cut_margin_mm: float = CUT_MARGIN_MM,
    boundary_mm: float = 0.0,
    edge_mm: Optional[float] = None,
    data_penalty: float = 0.1,
    penalty: Optional[float] = None,
    max_iterations: int = 100,
    tolerance: Optional[float] = None,
    relaxation: float = 1.0,
    pdf_iterations: int = PDF_ITERATIONS,
    smv_radius_mm: Optional[float] = None,
    kernel: str = "auto",
    merit_every: int = MERIT_EVERY,
    merit_factor: float = MERIT_FACTOR,
    level_slab_trend: bool = True,
    bregman_gain: float = BREGMAN_GAIN,
    device: Union[str, Device] = "cpu",
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """Total field inversion: susceptibility inside the mask straight from the total field.

    Parameters
    ----------
    total_field_hz : numpy.ndarray, shape (n0, n1, n2)
        Total field in Hz (background included), valid inside ``mask``.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where the field is known (the brain).
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float
        B0 direction in array-axis coordinates.
    b0_tesla : float
        Field strength in tesla.
    field_weight : numpy.ndarray, optional
        Reliability of the field per voxel (inverse noise SD, any scale).
    field_sd_hz : numpy.ndarray, optional
        The echo fit's noise SD per voxel (Hz), for ``"auto"``.
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2), optional
        Magnitude, for the edges the prior leaves free (none without it).
    background_removed : bool
        The field is already a local field (no outside sources): no warm
        start, and the outside is regularised like the tissue (then this is
        linear TV on the padded frame, with MERIT and the second pass), with
        its own defaults for the automatic ``lambda`` and ``tolerance``
        (``LOCAL_MODEL_ERROR_FRACTION``, ``LOCAL_TOLERANCE_PER_MM``).
    acquired_voxel_size_mm : sequence of 3 float, optional
        The scan's voxel size (mm) when the field was zero-filled onto this
        finer grid (:mod:`QSMLib.zero_fill`; the pipeline passes it): the
        automatic ``lambda`` follows it, since the data hold no more than the
        scan's information (on the project's 2 mm phantom zero-filled to 1 mm,
        chi NRMSE 34.8 % against 40.3 % with the grid's own voxel; the suite's
        1.5 mm heads the same to 0.4 point). Other automatic choices follow
        the grid. Default: ``voxel_size_mm``.
    regularization : float or "auto"
        ``lambda`` in ppm mm, as in :func:`QSMLib.inversion.tv.tv`; ``"auto"``
        chooses it (``AUTO_LAMBDA_FACTOR`` times TV's rule, or TV's rule itself with
        a model-error floor of ``LOCAL_MODEL_ERROR_FRACTION`` (0.04) of the field's
        RMS instead of 0.07 when ``background_removed``) from the noise of the field
        (:func:`~QSMLib.inversion._regularization.tv_regularization`) of the field the
        outside sources leave, a local field estimate; ``EDGE_LAMBDA_FACTOR``
        times more when the magnitude's edges are left free, and, given a
        local field whose noise swamps it, the excess over
        ``LOCAL_NOISE_RATIO_KNEE`` times more (:func:`_local_noise_factor`).
    edge_fraction : float, optional
        Share of the magnitude's gradient components in the mask that count
        as edges (MEDI's gradient mask, :func:`QSMLib.inversion._regularization.free_edges`;
        MEDI's own default is 0.3). A voxel with an edge along any axis has
        no total variation penalty. 0 turns the edges off. On the validation
        suite (whole pipeline, six cases) 0.15 brought the worst deep grey
        matter ROI error per case from 8-22 ppb down to 4-15 ppb (ROI slope
        0.90-0.97 to 0.94-1.00), at a chi NRMSE 2.5 points higher on average
        (HFEN and XSIM within 0.02-0.05); 0.3 gained little more on the ROIs
        and cost 5-10 NRMSE points. Default (since stop 46): ``EDGE_FRACTIONS``
        by voxel size, 0.05 up to 2 mm rising to 0.15 at 3 mm (the cube root
        of the voxel's volume; 0.1 up to 2 mm from stop 39).
    chi_edge_fraction : float
        A second pass: both solves continue from where they stopped, with
        the edges of the first (blended) estimate of chi left free as well,
        about this share of its gradient components between reported voxels
        (:func:`QSMLib.inversion._regularization.estimate_edges`, a ramp
        from weight 1 to 0 around that share); each runs until its own
        stopping rule (on the 256x256x176 benchmark head TFI's after 27
        iterations, the single-step solve's after 13; TFI's first pass
        stops at ``FIRST_PASS_TOLERANCE_FACTOR`` times the tolerance), then
        they are blended again. 0 runs one pass. At low SNR the magnitude's edges
        are mostly noise, and the borders of iron-rich nuclei, which decay
        fastest, are lost in it; chi shows them. On the fourteen validation
        suite heads (whole pipeline) 0.1 measured chi NRMSE 27.5 / 45.6 %
        mean / worst against 30.0 / 47.9 % with one pass and a mean worst
        deep grey matter ROI error of 6.2 against 6.9 ppb (stop 38; at stop
        37, when TFI's solve stopped after its first iteration and the pass
        was mostly a new single-step solve, 28.1 / 45.6 % and 6.1 ppb;
        0.15 and 0.2 then measured 27.9 and 27.8 % and 6.2 ppb, with the
        textured qsm-forward head's worst ROI error 10.1 and 10.6 ppb
        against 9.7). The inversion of the 256x256x176 benchmark head took
        14.8-15.5 s against 12.1-12.5 s with stop 37's code (the same spell
        of the machine; one pass took 10.4-11.1 s at stop 37).
    outside_weight : float
        ``omega`` outside the mask: how strongly the background sources are
        held to be piecewise constant (0 leaves them free, as projection
        onto dipole fields does).
    margin_mm : float
        Thickness of the shell of background sources around the mask's
        bounding box, mm. The shell's sources explain the background
        field, and the frame (mask's box plus shell) sets every
        iteration's cost. On the twelve validation suite cases (whole
        pipeline's total fields) 16, 12, 10 and 8 mm measured chi NRMSE
        within 0.2 points of each other on average (38.6-38.7 % on the six
        tuning cases, 36.0-36.2 % on the six held-out ones), and worst deep
        grey matter ROI errors of 11.2-12.2 and 12.6-14.4 ppb; 12 mm
        against 16 mm: 22 % fewer voxels on the 1 mm benchmark head.
    cut_margin_mm : float
        The shell's thickness beyond a side where the mask comes within two
        voxels of the field of view's edge along an axis within 60 degrees
        of B0 (a slab, a brainstem cut off by the field of view): the tissue
        goes on beyond it, in the strong lobe of its dipole field, and only
        sources that far out explain that field. Along the other axes a thicker shell
        only adds freedom to explain tissue as background. Measured from
        the exact total field with the magnitude, 16 against 48 mm: the 3 mm
        crop ``small_axial`` (cut on every side) chi NRMSE 54.1 / 51.4 %,
        worst deep grey matter ROI error 22.4 / 16.3 ppb (with a 16 mm
        ``margin_mm``: 55.6 / 51.7 % and 24.4 / 15.8 ppb; 48 mm on every
        axis: 60.6 % and 26.4 ppb). From the pipeline's own total field: the
        0.7 mm 7 T slab 31.5 / 30.1 %, 34.1 / 18.3 ppb. 72 mm since stop 40,
        chosen on seven slabs (the suite's and
        :data:`~QSMLib.phantom.suite.SLAB_CASES`: 40-80 mm thick, 0.7-1.06 mm,
        3 and 7 T, one oblique and bipolar, two through qsm-forward), whole
        pipeline, 48 / 72 / 96 mm: chi NRMSE 28.3 / 26.6 / 26.8 % mean, mean
        worst ROI error 12.8 / 11.4 / 11.9 ppb, worst 24.5 / 20.3 / 22.2 ppb.
    boundary_mm : float
        Width (mm) of the mask's outer layer whose total variation is
        weighted like the outside: its voxels hold partial volumes of bone
        and air, strong sources that a tissue prior would spread inwards.
    edge_mm : float, optional
        chi is reported on the mask eroded by this much (mm): the outer
        layer's voxels hold partial volumes of bone, air and scalp, which
        TFI reconstructs as the strong sources they are, not as tissue.
        Default: 2.5 mm or one voxel, whichever is larger (two voxel layers
        at 1 mm); none when ``background_removed``. On the validation suite the outer 2 mm
        held 29-43 % of the squared error of ~1 mm maps (RMS 40-54 ppb,
        against 8-9 ppb deeper than 8 mm), and the mask's voxels outside
        the brain (extracerebral CSF, RMS error 90 ppb) lie there.
    data_penalty, penalty : float
        ADMM penalties of the data split (``mu``) and gradient split
        (``rho``, default ``300 lambda``), as in :func:`QSMLib.inversion.tv.tv`.
    max_iterations : int
        Upper bound on ADMM iterations.
    tolerance : float, optional
        Stop when the relative change of ``chi`` inside the mask falls below
        it. Default: ``TOLERANCE_PER_MM`` (0.005) times the voxel size (the
        cube root of the voxel's volume, mm), at most 0.01: 0.005 at 1 mm,
        0.01 from 2 mm; ``RELAXED_TOLERANCE_FACTOR`` (2.5) times that where
        the steps are over-relaxed (``relaxation`` above 1), which stops
        about where plain ADMM stops at the tolerance itself. The stopping
        point regularises (later iterations fit noise and streaks), and
        where it is best depends on the grid: plain ADMM, on the
        twelve validation suite cases (whole pipeline's total fields) the
        iteration with the lowest chi NRMSE was 21-33 at 2 mm, 25-40 at
        1.5 mm, 36 at 1 x 1 x 2 mm, 44-68 at 1-1.06 mm and 78 or later at
        0.7 mm, while a fixed 0.01 stopped all of them after 25-34. Against
        that fixed 0.01, the whole pipeline measured chi NRMSE -0.8 to -2.5
        points on the 0.7-1.06 mm cases, -0.2 / -0.3 on the 1 x 1 x 2 and
        one 1.5 mm case and +1.5 on the noisiest one (1.5 mm, SNR 3), worst
        deep grey matter ROI error 11.2 / 12.6 against 12.0 / 18.3 ppb
        (tuning / held-out cases); 0.004 everywhere cost 2.7-9.3 points on
        four of the five 1.5-2 mm cases. With a second pass
        (``chi_edge_fraction`` > 0) TFI's first solve stops at
        ``FIRST_PASS_TOLERANCE_FACTOR`` (2) times it. Given a local field
        (``background_removed``) the default is ``LOCAL_TOLERANCE_PER_MM``
        (0.0025) per mm (0.0025 at 1 mm, 0.005 at 2 mm).
    relaxation : float
        Over-relaxation alpha of the ADMM (both solves), in (0, 2); 1 (the
        default) is plain ADMM. Each split and dual step takes ``alpha``
        times the new ``grad chi`` and ``D chi`` plus ``1 - alpha`` times
        the split before (Boyd et al., 2011, section 3.4.3), and the
        automatic tolerance is 2.5 times plain ADMM's. A speed option for
        whole heads: the whole pipeline with 1.8 (stop 61), against the
        default, ran 38-49 % fewer TFI iterations on 20 whole suite heads,
        chi NRMSE moving by -0.3 to +0.9 points (29.66 -> 29.70 % mean);
        but on eight slabs it rose by 0.2-1.4 points, and on the project's
        2 mm phantom by 1.5-2.9.
    merit_every, merit_factor : int, float
        MERIT (:func:`~QSMLib.inversion._regularization.merit_weight`, as in
        MEDI): every ``merit_every`` ADMM iterations, voxels whose weighted
        residual ``W |D chi - f|`` exceeds ``merit_factor`` times its
        standard deviation in the mask lose weight (``W`` divided by the
        squared excess), so that fields no dipole explains (partial volumes
        of bone and air at the mask's edge, flow, phase errors) do not
        spread streaks. ``merit_every = 0`` turns it off. On the six suite
        cases (whole pipeline's total fields) every 5 iterations at 5 SD
        brought chi NRMSE from 41.9 % mean, 57.4 % worst to 39.2 / 54.0 %
        (worst deep grey matter ROI error 7.4 -> 7.9 ppb mean over cases,
        14.5 ppb worst either way); 4 SD measured 38.9 / 53.5 % with larger
        ROI errors, 6 SD (MEDI's) 39.7 / 54.6 %, every 4 or 8 iterations
        within 0.4 points.
    level_slab_trend : bool
        Where the field of view cuts the mask at both ends of an axis within
        60 degrees of B0 (a slab, :func:`~QSMLib.dipole.faces_cutting_mask`),
        remove the linear trend of chi along that axis that makes its
        median gradient there 0 (:func:`level_trend`; not on a local field).
        A linear trend of susceptibility makes a field that is harmonic
        inside the mask, so the data cannot set it, and across a slab the
        thick shell of sources beyond its faces did: on the eight slabs of
        the validation suite (``SLAB_CASES``, ``slab_0p7mm_7T`` and the
        held-out 56 mm oblique bipolar slab; whole pipeline) chi's median
        gradient along the slab was -4.7 to +13.9 ppb per 10 cm, and the
        error of its fitted trend along B0 up to 31 ppb per 5 cm.
        Levelling brought chi NRMSE from 28.59 / 41.08 % mean / worst to
        27.73 / 38.52 % (lower on seven, +0.02 points on the eighth), the
        worst deep grey matter ROI error per slab from 14.4 / 29.0 to
        13.8 / 27.3 ppb and XSIM up on all eight (stop 47). Removing 1.5
        times the trend measured better still (27.40 / 37.41 %): it would
        assume the true trend has the sign of this phantom's anatomy, so the
        tissue's own prior (1.0) is used. On ``small_axial``, a 3 mm crop
        cut on every side, it removed 0.38 ppb per cm, and TFI from the
        exact total field went from 56.26 to 56.48 %. Whole heads are
        unchanged.
    bregman_gain : float
        On a whole head (the whole heads' blend), after the passes, one
        Bregman step (Osher et al. 2005): both solves continue from where
        they stopped, their data being the field plus this share of the
        residual ``f - D chi`` their data terms left (on the voxels where
        those terms apply), each until its stopping rule, and they are
        blended again. The residual holds what the prior took from chi
        (fine detail, the contrast of small structures) and noise; so the
        gain falls linearly to 0 across ``NOISY_DETAIL_RATIO`` of SS-TV's
        finest detail over TFI's after the passes (the blend's measure of
        noise, :func:`blend_estimates`), and with MERIT on, the step starts
        from MERIT's weights for that residual and gives back that much
        less of it (:func:`_bregman_data`). 0 turns the step off. Measured
        on the validation suite (whole pipeline; README, stop 49), against
        no step: the fourteen heads' chi NRMSE 28.47 / 42.54 % mean / worst
        -> 28.05 / 41.93 % at 0.3 (lower on all twelve where it ran; the
        SNR-20 head's ratio, 1.42, turns it off, and the 0.7 mm slab does
        not run it), worst deep grey matter ROI error 8.37 / 22.63 -> 8.20 /
        21.65 ppb, HFEN 20.49 -> 19.88 %; the four held-out whole heads
        33.25 / 39.03 -> 32.53 / 38.51 %, 10.19 / 14.02 -> 10.42 / 14.87 ppb.
        At 0.5: 28.01 / 41.63 % and 8.31 / 20.76 ppb, held-out 32.41 /
        38.42 % and 10.90 / 15.47 ppb; at 1, without the noise guard,
        29.30 / 45.38 % (the SNR-20 head lost 8.6 points). The step raises
        the deep grey matter against the mean, which on most heads already
        reads a few ppb high. On the eight slabs of stop 48 the step (0.5,
        without MERIT's weights) measured 26.16 / 35.25 -> 26.66 / 35.66 %
        and XSIM 0.688 -> 0.655 (TFI's residual there also holds the field
        of the tissue beyond the cut faces, which its shell explains only in
        part); at 0.3 with them 26.08 / 35.28 % and XSIM 0.675, better on
        four slabs and worse on four: the step does not run on a slab or a
        crop.
    pdf_iterations : int
        Conjugate-gradient iterations of the projection onto dipole fields
        that gives the outside sources' starting point, on a grid twice as
        coarse (then ``FINE_ITERATIONS`` more on the full grid).
    smv_radius_mm : float, optional
        Radius (mm) of the SMV ball of the single-step solve whose chi is
        averaged with TFI's (see above); 0 runs TFI alone. Default: four
        voxels (the cube root of the voxel's volume), within 4-6 mm, and at
        least 1.5 times the largest voxel side (over 4 mm, a 6 mm ball would
        hold its centre voxel alone and filter every field to 0); its
        lambda is ``SMV_LAMBDA_FACTOR`` (0.15) times TFI's, for the SMV
        filter leaves the data term little of the low spatial frequencies
        the prior then has to hold. Measured on the twelve suite cases (the
        pipeline's total fields, averaged chi NRMSE mean over the six tuning
        / six held-out cases): 4 mm everywhere 33.8 / 32.3 %, 6 mm 33.9 /
        33.0 %, 8 mm 36.7 / 35.7 %, the default 32.9 / 31.5 %; at 1 mm
        (axial_1mm_3T) 2.5 / 3 / 4 / 6 / 8 mm gave 27.9 / 24.8 / 23.4 /
        25.3 / 29.5 %, at 2 mm (low_field_2mm_1p5T) 4 / 5 / 6 / 8 mm 39.6 /
        37.1 / 37.0 / 38.4 %; lambda 0.3 times TFI's at 6 mm 34.1 / 33.1 %.
        Weights of 0.4 or 0.6 for TFI instead of 0.5 (at 6 mm) came within
        0.8 points on every case but the slab below.
        Not run on a local field (``background_removed``), nor where no
        voxel lies that deep in the mask (``parameters["smv_skipped"]`` says
        which). Where more than ``MAX_CUT_SHARE`` (10 %) of the mask lies
        within the radius of faces where the mask comes within two voxels of
        the field of view's edge (a crop, a slab), or where the field of view
        cuts the mask at both ends along B0 (a slab), the solve has no data near
        those faces and few of the low spatial frequencies: it gives only its
        fine detail, faded in from nothing at those faces to its share at
        two radii from them (:func:`cut_face_fade`), and TFI keeps all of the
        coarse detail (``parameters["smv_blend"]``). Before stop 48 TFI ran
        alone there: on the 0.7 mm 7 T slab (19 %, cut along B0) the whole
        heads' average had measured 28.7 % against 27.8 % for TFI (worst ROI
        error 15.9 / 11.2 ppb); with the fine detail alone, faded, the eight
        slabs' chi NRMSE went from 27.73 / 38.52 % to 26.16 / 35.25 % (mean
        / worst; README, stop 48). A brainstem cut off by the field of view,
        as in most suite cases, is a few voxels.
    kernel : {"auto", "sampled", "even"}
        The dipole kernel of both solves. ``"sampled"``: ``D(k)`` sampled on
        the FFT grid (:func:`~QSMLib.dipole.dipole_kernel`); ``"even"``: the
        same, made even towards Nyquist (:func:`~QSMLib.dipole.even_dipole_kernel`),
        which differs only where B0 is oblique to the grid. ``"auto"``: with B0
        oblique, ``"even"`` unless subtracting the field of the starting
        background sources (through the sampled kernel) lowers the field's
        finest detail, which happens where the field itself was simulated
        with the sampled kernel (air's field then carries its Nyquist
        ripple): then the sources are found again on a frame of the whole
        field of view and its shell, since the ripple of a source fades
        slowly along the grid's lines and sources beyond the shell leave it
        in the brain too, and they get ``RIPPLE_ITERATIONS`` (60) more
        iterations on the full grid, since the ripple lies at the finest
        scale that their coarse start leaves out (:func:`_ripple_test`);
        ``"sampled"`` with B0 along an axis (the two are then the
        same) or for a local field. ``parameters`` records ``kernel`` and,
        when it was tested, ``kernel_detail_ratio`` and
        ``whole_field_of_view``. Measured, whole
        pipeline (chi NRMSE %, worst deep grey matter ROI error ppb): the
        five suite heads with B0 oblique to a grid simulated twice as fine
        (ratio 1.8-3.7) went from 24.4 / 3.6, 26.6 / 4.4, 25.2 / 5.1,
        37.0 / 10.9 and 35.8 / 9.2 with the sampled kernel to 22.4 / 3.8,
        25.7 / 3.9, 23.3 / 5.0, 34.9 / 8.0 and 33.4 / 5.7 (``bipolar_oblique_9echo``,
        ``warped_1mm_3T_a`` / ``_b``, ``warped_1p5mm_3T_c``, ``aniso_tilted_1x1x2``);
        ``qsmforward_oblique_1p06mm`` (qsm-forward's sampled kernel, ratio
        0.46) keeps the sampled kernel: 28.4 / 5.2 with the coarse start
        alone, 25.0 / 4.6 with the refined sources (against 21.4 / 2.8 for
        the same head with B0 along an axis); two scratch qsm-forward cases,
        1.5 mm tilted 28 degrees and 1.06 mm with 9 bipolar echoes tilted 16
        degrees, 39.1 / 8.0 -> 33.4 / 6.5 (27.1 / 2.8 axial) and 29.1 / 8.2
        -> 25.5 / 7.1 (30 iterations then; 60 measured 0.0 / 0.4 / 0.4 points
        better on these three, for 5 s more on the first). With 60, the
        default since stop 50: ``qsmforward_oblique_1p06mm`` 20.28 / 5.8 ->
        20.01 / 5.6 with stop 49's defaults, and a scratch qsm-forward head
        (1.06 mm, B0 27 degrees oblique, texture, peak SNR 50) 34.33 / 11.0
        -> 33.07 / 10.2 (27.40 / 6.8 with B0 along an axis). With the
        sources on the whole field of view (since stop 52): 19.59 / 4.3,
        the held-out 1.2 mm head tilted 16 degrees 29.21 / 8.3 -> 28.73 /
        10.1 and the 27-degree head 32.39 / 11.1, for 84-95 s against
        56-60 s on ``qsmforward_oblique_1p06mm`` (README, stop 52). The five suite
        heads' gain most likely lies in their simulation: each voxel's field
        is a box average of a finer one, which folds frequencies beyond the
        grid's band into it. A signal cropped in k-space, as a scanner's is, has no
        fold: on a qsm-forward head so cropped (1.5 mm, B0 17 degrees
        oblique) the two kernels measured 25.34 and 25.32 %.
    device : str or Device
        Where the solver runs: ``"cpu"`` (numpy), ``"cuda"`` (a GPU through
        PyTorch or CuPy, ``pip install "qsmlib[gpu]"``) or ``"auto"`` (the
        GPU when there is one); see :mod:`QSMLib._backend`. Results agree
        with the CPU's to float32 rounding.

    Returns
    -------
    InversionResult
        Susceptibility in ppm on ``mask`` less its outer ``edge_mm`` (not
        referenced), that valid mask, and ``parameters``: ``lambda``, the
        rule that chose it, the noise, the iterations and MERIT's settings
        with ``merit_voxels``, the voxels its last step down-weighted; the
        single-step solve's ``smv_radius_mm``, ``smv_regularization``,
        ``smv_iterations``, ``smv_merit_voxels`` and whether its field had
        the field of TFI's outside sources subtracted
        (``smv_outside_field_subtracted``, ``smv_detail_ratio``: see
        :func:`_without_kernel_ripple`), or ``smv_skipped`` (why it did not
        run); on a slab, ``slab_trend_removed_ppb_per_cm`` (per axis, the
        trend ``level_slab_trend`` removed); ``bregman_gain``, the fine detail ratio that set it
        (``bregman_detail_ratio``) and, when the step ran, ``bregman_iterations`` and
        ``bregman_smv_iterations``.

    References
    ----------
    Liu Z, Kee Y, Zhou D, Wang Y, Spincemaille P. Preconditioned total field
    inversion (TFI) method for quantitative susceptibility mapping. Magn
    Reson Med 2017;78:303-315.
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear
    formulation of the magnetic field to source relationship for robust
    quantitative susceptibility mapping. Magn Reson Med 2013;69:467-476
    (MERIT).
    Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion
    for quantitative susceptibility mapping using structural consistency
    between the magnitude image and the susceptibility map. NeuroImage
    2012;59:2560-2568 (the gradient mask).
    Chatnuntawech I, McDaniel P, Cauley SF, et al. Single-step quantitative
    susceptibility mapping with variational penalties. NMR Biomed
    2017;30:e3570 (the single-step solve).
    Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear
    susceptibility inversion with variational regularization. Magn Reson Med
    2018;80:814-821.
    Osher S, Burger M, Goldfarb D, Xu J, Yin W. An iterative regularization
    method for total variation-based image restoration. Multiscale Model
    Simul 2005;4:460-489 (the Bregman step).

    Examples
    --------
    A paramagnetic ball inside the mask, seen through a strong linear
    background field: the ball comes out positive, the background is gone.

    >>> import numpy as np
    >>> from QSMLib.dipole import forward_field
    >>> grid = np.indices((32, 32, 32)).astype(np.float32) - 15.5
    >>> mask = (grid**2).sum(axis=0) < 14**2
    >>> chi = ((grid**2).sum(axis=0) < 4**2).astype(np.float32) * 0.2
    >>> field = forward_field(chi, (1, 1, 1)) * 127.7 + 20.0 * grid[2]
    >>> result = tfi(field, mask, (1, 1, 1), b0_direction=(0, 0, 1), b0_tesla=3.0, regularization=1e-4)
    >>> inside = (grid**2).sum(axis=0) < 3**2
    >>> bool(result.chi_ppm[inside].mean() - result.chi_ppm[mask & ~inside].mean() > 0.1)
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("TFI: the mask is empty, so there is no field to invert. Check the mask.")
    _check_relaxation("TFI", relaxation)
    if tolerance is None:
        tolerance = _default_tolerance(voxel_size_mm, relaxation, LOCAL_TOLERANCE_PER_MM if background_removed else
                                       TOLERANCE_PER_MM)
    if edge_fraction is None:
        edge_fraction = _default_edge_fraction(voxel_size_mm)
    for name, value in (("data_penalty", data_penalty), ("margin_mm", margin_mm), ("cut_margin_mm", cut_margin_mm),
                        ("tolerance", tolerance),
                        ("merit_factor", merit_factor)):
        if not value > 0:
            raise QSMInputError(f"TFI: {name} must be positive, got {value!r}.")
    _check_prior_settings("TFI", merit_every, edge_fraction)
    if not 0 <= chi_edge_fraction < 1:
        raise QSMInputError(f"TFI: chi_edge_fraction must lie in [0, 1), got {chi_edge_fraction!r}.")
    if not 0 <= bregman_gain <= 1:
        raise QSMInputError(f"TFI: bregman_gain must lie in [0, 1] (0 turns the Bregman step off), "
                            f"got {bregman_gain!r}.")
    if smv_radius_mm is not None and not smv_radius_mm >= 0:
        raise QSMInputError(f"TFI: smv_radius_mm must be 0 (TFI alone) or a positive radius in mm, "
                            f"got {smv_radius_mm!r}.")
    if not outside_weight >= 0:
        raise QSMInputError(f"TFI: outside_weight must be 0 or positive, got {outside_weight!r}.")
    if kernel not in ("auto", "sampled", "even"):
        raise QSMInputError(f"TFI: kernel must be 'auto', 'sampled' or 'even', got {kernel!r}.")
    kernel_parameters: dict[str, Any] = {"kernel": "sampled" if kernel == "auto" else kernel}
    test_kernel = kernel == "auto" and not background_removed and _oblique(b0_direction)
    kernel_of = even_dipole_kernel if kernel == "even" else dipole_kernel
    target = resolve_device(device)
    check_cancel(cancel)
    report(progress, 0.0, "TFI: set-up")

    def frame(volume: np.ndarray) -> np.ndarray:
        """``volume`` on the current pass's frame (``box`` and ``shape``, set in the loop below)."""
        return _fft.pad(np.asarray(volume, dtype=np.float32)[box], shape)

    for whole_field_of_view in (False, True):
        box, shape, sides, extent, at_edge = _shell_frame(mask, voxel_size_mm, b0_direction, margin_mm,
                                                          cut_margin_mm, whole_field_of_view)
        inside_host = frame(mask) > 0
        field_host = frame(np.where(mask, hz_to_ppm(total_field_hz, b0_tesla), 0))
        weight = frame(data_weight(mask, field_weight))
        weight_squared = weight * weight
        kernel_host = kernel_of(shape, voxel_size_mm, b0_direction)
        inside, field, kernel = (target.to_device(a) for a in (inside_host, field_host, kernel_host))
        if background_removed:
            outside_weight = 1.0
            chi = target.to_device(np.zeros(shape, dtype=np.float32))
        else:
            chi = _background_sources(field, target.to_device(weight_squared), inside, kernel, voxel_size_mm,
                                      b0_direction, pdf_iterations, target.to_device, cancel)
        if not test_kernel:
            spectrum = _backend.rfftn(chi)
            background = _backend.irfftn(spectrum * kernel, shape)
            break
        # the outside sources' field through the sampled kernel carries its Nyquist ripple. Where subtracting it
        # lowers the field's finest detail, the field has the ripple too (it was simulated with the sampled
        # kernel): both solves keep that kernel, and the sources are refined on the full grid to match the
        # ripple (_ripple_test). Where it adds detail (a measured field, or one simulated on a finer grid) they
        # model the field with the even kernel from here on (starting the sources again with it measured 0.1
        # points worse on the five oblique suite heads, for a second start)
        ratio, chi, spectrum, background = _ripple_test(field, target.to_device(weight_squared), inside, kernel, chi,
                                                        field_host, inside_host, target, cancel,
                                                        refine=whole_field_of_view)
        if ratio < 1.0 and not whole_field_of_view:
            # the ripple of a source fades slowly along the grid's lines, so sources anywhere in the field of
            # view leave it in the brain, not only the shell's: start again on a frame of the whole field of
            # view (README, stop 52)
            continue
        kernel_parameters.update(kernel=("even" if ratio >= 1.0 else "sampled"), kernel_detail_ratio=ratio,
                                 whole_field_of_view=whole_field_of_view)
        if ratio >= 1.0:
            kernel_of = even_dipole_kernel
            kernel_host = kernel_of(shape, voxel_size_mm, b0_direction)
            kernel = target.to_device(kernel_host)
            background = _backend.irfftn(spectrum * kernel, shape)
        break
    box_shape = tuple(s.stop - s.start for s in box)
    # the prior's tissue, on the frame the loop settled on (only the solves below use it)
    tissue = frame(erode(mask, boundary_mm, voxel_size_mm)) > 0 if boundary_mm > 0 else inside_host
    del spectrum
    # what the outside sources leave is a local field estimate: its noise and size set lambda
    # (on the host: the noise estimate takes a median)
    model_error_fraction = LOCAL_MODEL_ERROR_FRACTION if background_removed else MODEL_ERROR_FRACTION
    regularization, parameters = tv_regularization(
        regularization, np.where(inside_host, field_host - target.to_numpy(background), 0), inside_host, weight,
        # zero-filled data hold the acquisition's information: lambda follows its voxels, not the solving grid's
        voxel_size_mm if acquired_voxel_size_mm is None else acquired_voxel_size_mm, "TFI",
        None if field_sd_hz is None else frame(np.where(mask, hz_to_ppm(field_sd_hz, b0_tesla), 0)),
        model_error_fraction=model_error_fraction)
    parameters.update(kernel_parameters)
    use_edges = magnitude is not None and edge_fraction > 0
    if parameters.get("regularization_rule") == "noise-proportional":
        parameters["model_error_fraction"] = model_error_fraction
        factor = (_local_noise_factor(parameters) if background_removed else AUTO_LAMBDA_FACTOR) * (
            EDGE_LAMBDA_FACTOR if use_edges else 1.0)
        if factor != 1.0:
            regularization *= factor
            parameters.update(regularization=regularization, regularization_rule=f"noise-proportional x{factor:g}")
    parameters["edge_fraction"] = edge_fraction if use_edges else 0.0
    tissue_weight = frame(free_edges(magnitude, mask, voxel_size_mm, edge_fraction)) if use_edges else 1.0
    # the ADMM's lambda and lambda / rho (rho = 300 lambda unless a penalty is given)
    admm_lambda = float(regularization if penalty is None else penalty / 300.0)
    lambda_over_rho = 1.0 / 300.0 if penalty is None else regularization / penalty
    threshold = _soft_threshold(tissue, tissue_weight, outside_weight, lambda_over_rho)
    y = background
    y[inside] = field[inside]
    solve = dict(shape=shape, voxel_size_mm=voxel_size_mm, data_penalty=data_penalty, max_iterations=max_iterations,
                 tolerance=tolerance, relaxation=relaxation, merit_every=merit_every, merit_factor=merit_factor,
                 target=target, progress=progress, cancel=cancel)
    # no single-step solve for a local field (no background to remove); on a slab or a crop it has no data near
    # the faces where the field of view cuts the tissue (the field of the tissue beyond them is what TFI's shell
    # explains), and it gives only its fine detail, away from those faces
    single_step = 0.0 if background_removed else _smv_radius(smv_radius_mm, voxel_size_mm)
    cut_share = _cut_share(mask, extent, at_edge, single_step, voxel_size_mm) if single_step else 0.0
    if background_removed:
        parameters["smv_skipped"] = "the field is a local field"
    elif not single_step:
        parameters["smv_skipped"] = "turned off"
    sstv_detail_weight = None
    slab_axes = _slab_axes(mask, b0_direction)
    if single_step and (cut_share > MAX_CUT_SHARE or slab_axes):
        sstv_detail_weight = cut_face_fade(mask.shape, extent, at_edge, single_step, voxel_size_mm)[box]
        near, far = (single_step * multiple for multiple in CUT_FACE_FADE)
        parameters["smv_blend"] = (f"fine detail only, faded in from {near:g} to {far:g} mm from the faces where "
                                   f"the field of view cuts the mask ({100 * cut_share:.0f} % of it lies within "
                                   f"{single_step:g} mm of them)")
    if edge_mm is None:
        edge_mm = 0.0 if background_removed else _default_edge_mm(voxel_size_mm)
    valid = erode(mask, float(edge_mm), voxel_size_mm)
    if not valid.any():
        raise QSMInputError(f"TFI: nothing of the mask is left after leaving out its outer {edge_mm} mm.")
    # each pass: TFI's solve, then SS-TV's (0.6 and 0.4 of the pass's progress)
    two_passes = chi_edge_fraction > 0
    # the Bregman step runs with the whole heads' blend alone: on a slab or a crop TFI's residual also holds the
    # field of the tissue beyond the cut faces that its shell explains only in part (README, stop 49)
    bregman_step = bregman_gain > 0 and bool(single_step) and sstv_detail_weight is None
    pass_span = 1.0 / (1 + two_passes + bregman_step)
    tfi_span = 0.6 * pass_span if single_step else pass_span
    weight_device = target.to_device(weight)
    first_tolerance = tolerance * (FIRST_PASS_TOLERANCE_FACTOR if two_passes else 1.0)
    threshold_device = target.to_device(threshold)
    chi, iterations, merit_voxels = _admm(
        chi, y, field, weight_device, inside, kernel_host, threshold_device,
        admm_lambda, label="TFI",
        progress_span=(0.0, tfi_span), **dict(solve, tolerance=first_tolerance))
    parameters.update(regularization=float(regularization), iterations=iterations, tolerance=float(tolerance),
                      first_pass_tolerance=float(first_tolerance), relaxation=float(relaxation),
                      margin_mm=[[float(m * v) for m in pair] for pair, v in zip(sides, voxel_size_mm)])
    if merit_every:
        parameters.update(merit_every=merit_every, merit_factor=merit_factor, merit_voxels=merit_voxels)
    del weight_squared
    smv_chi = None
    if single_step:
        field_host, ripple_parameters = _without_kernel_ripple(field_host, inside_host, target.to_numpy(chi),
                                                               kernel_host, shape)
        parameters.update(ripple_parameters)
        # on its own frame inside TFI's (no shell: 144x180x150 against 150x200x162 on the 1 mm benchmark head)
        sub, sub_shape = _smv_frame(inside_host, single_step, voxel_size_mm)
        sub_inside = to_frame(inside_host, sub, sub_shape) > 0
        sub_tissue = to_frame(tissue, sub, sub_shape) > 0
        smv_field, smv_weight = to_frame(field_host, sub, sub_shape), to_frame(weight, sub, sub_shape)
        smv_kernel = kernel_of(sub_shape, voxel_size_mm, b0_direction)
        smv_data = _smv_data(smv_field, sub_inside, sub_shape, voxel_size_mm, single_step)

        def smv_pass(prior_weight: Union[np.ndarray, float], span: tuple[float, float],
                     start: Any = None, data: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
                     split: Any = None, weight: Optional[np.ndarray] = None) -> tuple[Any, dict[str, Any]]:
            """SS-TV on its frame with TFI's prior weight (one pass; ``start``: chi to continue from,
            ``data``: other data than the filtered field, ``split``: the data split to continue from,
            ``weight``: another data weight)."""
            # the threshold is made on the frame, so that its padding is outside tissue too
            threshold = _soft_threshold(sub_tissue, to_frame(prior_weight, sub, sub_shape)
                                        if np.ndim(prior_weight) else prior_weight, 1.0, 1.0 / 300.0)
            return _single_step(smv_field, smv_weight if weight is None else weight, sub_inside, smv_kernel,
                                single_step, regularization * SMV_LAMBDA_FACTOR, threshold,
                                dict(solve, shape=sub_shape), progress_span=span, data=data or smv_data, start=start,
                                split=split)

        smv_chi, smv_parameters = smv_pass(tissue_weight, (tfi_span, pass_span))
        parameters.update(smv_parameters)

    smoothed_valid: dict[float, np.ndarray] = {}

    def estimate() -> np.ndarray:
        """The reported chi on TFI's box: TFI's, or TFI's blended with SS-TV's."""
        box_chi = _fft.crop(target.to_numpy(chi), box_shape)
        if smv_chi is not None:
            # only the mask's chi is reported, so the solve's is placed there alone
            smv_result = _fft.crop(from_frame(target.to_numpy(smv_chi), sub, inside_host), box_shape)
            box_chi, blend_parameters = blend_estimates(box_chi, smv_result, valid[box], voxel_size_mm,
                                                        sstv_detail_weight, smoothed_valid)
            parameters.update(blend_parameters)
        return box_chi

    box_chi = estimate()
    if two_passes:
        # a second pass of both solves from where the first stopped, with the first estimate's edges left
        # free as well
        edges = estimate_edges(box_chi, valid[box], voxel_size_mm, chi_edge_fraction)
        tissue_weight = np.minimum(tissue_weight, _fft.pad(edges, shape))
        threshold_device = target.to_device(_soft_threshold(tissue, tissue_weight, outside_weight, lambda_over_rho))
        chi, iterations, merit_voxels = _admm(
            chi, y, field, weight_device, inside, kernel_host, threshold_device,
            admm_lambda, label="TFI (chi's edges)",
            progress_span=(pass_span, pass_span + tfi_span), warm_start=True, **solve)
        parameters.update(chi_edge_fraction=chi_edge_fraction, chi_edge_voxels=int((edges == 0).sum()),
                          chi_edge_iterations=iterations)
        if smv_chi is not None:
            # its data split, which a Bregman step continues from (as TFI's does)
            smv_split = target.to_device(smv_data[1].copy())
            smv_chi, smv_parameters = smv_pass(tissue_weight, (pass_span + tfi_span, 2 * pass_span), start=smv_chi,
                                               split=smv_split)
            parameters["chi_edge_smv_iterations"] = smv_parameters["smv_iterations"]
        box_chi = estimate()
    else:
        parameters["chi_edge_fraction"] = 0.0
    gain = 0.0
    if bregman_step and smv_chi is not None:
        parameters["bregman_detail_ratio"] = parameters["fine_detail_ratio"]
        gain = bregman_gain * _noise_guard(parameters["fine_detail_ratio"])
    parameters["bregman_gain"] = gain
    if gain > 0:
        # one Bregman step: both solves continue, with the share ``gain`` of what their data terms left
        # unexplained added to their data, which gives back the contrast the prior took from fine detail
        start = 1.0 - pass_span
        outliers = merit_factor if merit_every else None
        bregman_field, bregman_weight = _bregman_data(field, chi, kernel, weight_device, inside, shape, gain, outliers)
        chi, iterations, _ = _admm(
            chi, y, bregman_field, bregman_weight, inside, kernel_host, threshold_device, admm_lambda,
            label="TFI (Bregman step)", progress_span=(start, start + tfi_span), warm_start=True, **solve)
        parameters["bregman_iterations"] = iterations
        deep, smv_field_filtered, smv = smv_data
        smv_field_filtered, smv_bregman_weight = (target.to_numpy(a) for a in _bregman_data(
            target.to_device(smv_field_filtered), smv_chi, target.to_device(smv_kernel * smv),
            target.to_device(smv_weight), target.to_device(deep), sub_shape, gain, outliers))
        smv_chi, smv_parameters = smv_pass(tissue_weight, (start + tfi_span, 1.0), start=smv_chi,
                                           data=(deep, smv_field_filtered, smv),
                                           split=smv_split if two_passes else None, weight=smv_bregman_weight)
        parameters["bregman_smv_iterations"] = smv_parameters["smv_iterations"]
        box_chi = estimate()
    del y, field, kernel, weight_device, field_host, kernel_host, weight, tissue_weight, threshold_device
    result = np.zeros(mask.shape, dtype=np.float32)
    result[box] = box_chi
    result[~valid] = 0
    if level_slab_trend and not background_removed:
        result = _level_slab(result, valid, slab_axes, voxel_size_mm, parameters)
    report(progress, 1.0, "TFI done")
    return InversionResult(result, parameters, valid)


def sstv(
    total_field_hz: np.ndarray,
    mask: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    b0_direction: Sequence[float],
    b0_tesla: float,
    field_weight: Optional[np.ndarray] = None,
    field_sd_hz: Optional[np.ndarray] = None,
    magnitude: Optional[np.ndarray] = None,
    regularization: Union[float, str] = "auto",
    radius_mm: Optional[float] = None,
    edge_fraction: float = 0.15,
    pad_factor: float = 1.0,
    edge_mm: Optional[float] = None,
    data_penalty: float = 0.1,
    max_iterations: int = 100,
    tolerance: Optional[float] = None,
    relaxation: float = 1.0,
    merit_every: int = MERIT_EVERY,
    merit_factor: float = MERIT_FACTOR,
    kernel: str = "auto",
    level_slab_trend: bool = True,
    device: Union[str, Device] = "cpu",
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> InversionResult:
    """Single-step TV alone (SS-TV): susceptibility from the SMV-filtered total field, no background step.

    The second of the two solves that :func:`tfi` averages, run by itself on
    the mask's bounding box: ``min 1/2 ||W (S D chi - S f)||^2 + lambda
    ||omega grad chi||_1`` on the voxels whose ball of ``radius_mm`` lies in
    the mask, where the SMV filter ``S`` (a voxel less its ball's mean)
    removes the background field exactly. Same prior (the magnitude's edges
    left free), MERIT and ADMM as :func:`tfi`, without TFI's outside sources,
    their start (projection onto dipole fields) and their shell: the
    ``fast`` preset's inversion.

    Parameters
    ----------
    total_field_hz, mask, voxel_size_mm, b0_direction, b0_tesla
        As in :func:`tfi`.
    field_weight, field_sd_hz, magnitude
        As in :func:`tfi`.
    regularization : float or "auto"
        ``lambda`` in ppm mm. ``"auto"``: linear TV's noise-proportional rule
        (:func:`~QSMLib.inversion._regularization.tv_regularization`) on the
        filtered field times ``SSTV_LAMBDA_FACTOR``, and ``EDGE_LAMBDA_FACTOR``
        times more with the magnitude's edges.
    radius_mm : float, optional
        SMV radius, mm; default as :func:`tfi`'s ``smv_radius_mm``.
    edge_fraction, edge_mm, data_penalty, max_iterations, tolerance, merit_every, merit_factor, device
        As in :func:`tfi` (a ``tolerance`` of 0 runs ``max_iterations``).
    relaxation : float
        Over-relaxation of the ADMM, as :func:`tfi`'s (1, the default: plain
        ADMM; above 1 the automatic tolerance is 2.5 times as large).
    kernel : {"auto", "sampled", "even"}
        The dipole kernel, as :func:`tfi`'s. ``"auto"`` with B0 oblique to the grid finds the sources outside
        the mask that explain the field inside (TFI's start, in TFI's shell) and tests their field through the
        sampled kernel as :func:`tfi` does: where subtracting it lowers the field's finest detail (a field
        simulated with the sampled kernel, whose air carries its Nyquist ripple past the SMV filter), the
        solve takes the field less it and the sampled kernel; elsewhere (a measured field) the field as it is
        and the even kernel (the sources of a field with the ripple are found on the whole field of view, as
        TFI's are). ``parameters`` records ``kernel``, ``kernel_detail_ratio``, ``outside_field_subtracted``
        and ``whole_field_of_view``. Measured (``fast`` preset, whole pipeline, chi NRMSE % / worst deep grey
        matter ROI error ppb): qsm-forward heads with B0 oblique, 1.06 mm tilted 17 deg, 1.5 mm tilted 28 deg
        and 1.06 mm 9-echo bipolar tilted 16 deg (the last two scratch cases), 62.1 / 9.3 -> 27.4 / 6.7, 101.9
        / 10.6 -> 40.0 / 7.1 and 60.7 / 13.5 -> 27.5 / 6.0 (the first two with B0 along an axis: 20.9 / 4.4
        and 32.2 / 6.5; 60 refinement iterations instead of 30 gave 26.5, 38.5 and 26.5 %, for 5 s more on the
        first); the five suite heads with B0 oblique to a grid simulated twice as fine 26.1 / 28.2 / 28.0 /
        41.4 / 40.1 -> 25.5 / 28.0 / 27.8 / 41.0 / 39.3 % (bipolar_oblique_9echo, warped_1mm_3T_a / _b,
        warped_1p5mm_3T_c, aniso_tilted_1x1x2; worst ROI error 5.1 -> 6.4 ppb on the first, within 0.8 ppb
        elsewhere). With the sources on the whole field of view (since stop 52) ``qsmforward_oblique_1p06mm``
        25.16 / 6.1 -> 24.05 / 5.4 and the held-out 1.2 mm head tilted 16 deg 34.14 / 7.8 -> 33.63 / 8.3. With
        B0 along an axis nothing changes and nothing runs.
    pad_factor : float
        Zero padding per axis of the solve frame (the mask's box plus the radius on every side, also beyond a
        face where the field of view cuts the mask), at least 1: 1 (none more) is enough, since the filter
        removes the field of the frame's periodic copies like any background.
    level_slab_trend : bool
        As in :func:`tfi`: on a slab, chi's linear trend along the cut axis is set so that its median gradient
        there is 0. The SMV filter removes the field of any linear trend, so the prior alone had set it. On the
        validation suite's eight slabs (``fast`` preset, whole pipeline; stop 47) the median gradient removed
        was 7.4-20.6 ppb per 10 cm, and chi NRMSE went from 42.40 / 50.19 % mean / worst to 41.08 / 49.44 %
        (lower on all eight), the worst deep grey matter ROI error per slab from 46.0 to 43.8 ppb on average.

    Returns
    -------
    InversionResult
        chi in ppm on ``mask`` less its outer ``edge_mm`` (not referenced), that
        mask, and ``parameters`` as :func:`tfi`'s single-step entries plus
        ``regularization``, its rule and the noise (and on a slab
        ``slab_trend_removed_ppb_per_cm``).

    References
    ----------
    Chatnuntawech I, McDaniel P, Cauley SF, et al. Single-step quantitative
    susceptibility mapping with variational penalties. NMR Biomed
    2017;30:e3570.

    Examples
    --------
    >>> import numpy as np
    >>> from QSMLib.dipole import forward_field
    >>> grid = np.indices((32, 32, 32)).astype(np.float32) - 15.5
    >>> mask = (grid**2).sum(axis=0) < 14**2
    >>> chi = ((grid**2).sum(axis=0) < 4**2).astype(np.float32) * 0.2
    >>> field = forward_field(chi, (1, 1, 1)) * 127.7 + 20.0 * grid[2]
    >>> result = sstv(field, mask, (1, 1, 1), b0_direction=(0, 0, 1), b0_tesla=3.0, regularization=1e-4)
    >>> inside = (grid**2).sum(axis=0) < 3**2
    >>> bool(result.chi_ppm[inside].mean() - result.chi_ppm[result.mask & ~inside].mean() > 0.1)
    True
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise QSMInputError("SS-TV: the mask is empty, so there is no field to invert. Check the mask.")
    _check_relaxation("SS-TV", relaxation)
    if tolerance is None:
        tolerance = _default_tolerance(voxel_size_mm, relaxation)
    for name, value in (("data_penalty", data_penalty), ("merit_factor", merit_factor)):
        if not value > 0:
            raise QSMInputError(f"SS-TV: {name} must be positive, got {value!r}.")
    if not pad_factor >= 1:
        raise QSMInputError(f"SS-TV: pad_factor must be at least 1 (no padding), got {pad_factor!r}.")
    if not tolerance >= 0:
        raise QSMInputError(f"SS-TV: tolerance must be 0 (run max_iterations) or positive, got {tolerance!r}.")
    if radius_mm is not None and not radius_mm > 0:
        raise QSMInputError(f"SS-TV: radius_mm must be a positive radius in mm, got {radius_mm!r}.")
    _check_prior_settings("SS-TV", merit_every, edge_fraction)
    if kernel not in ("auto", "sampled", "even"):
        raise QSMInputError(f"SS-TV: kernel must be 'auto', 'sampled' or 'even', got {kernel!r}.")
    target = resolve_device(device)
    check_cancel(cancel)
    report(progress, 0.0, "SS-TV: set-up")
    radius = _smv_radius(radius_mm, voxel_size_mm)
    box, shape = _smv_frame(mask, radius, voxel_size_mm, pad_factor)
    box_shape = tuple(part.stop - part.start for part in box)

    def frame(volume: np.ndarray) -> np.ndarray:
        return _fft.pad(np.asarray(volume, dtype=np.float32)[box], shape)

    inside_host = frame(mask) > 0
    field_ppm = np.where(mask, hz_to_ppm(total_field_hz, b0_tesla), 0).astype(np.float32, copy=False)
    full_weight = data_weight(mask, field_weight)
    field_host = frame(field_ppm)
    weight = frame(full_weight)
    kernel_parameters: dict[str, Any] = {"kernel": "sampled" if kernel == "auto" else kernel}
    if kernel == "auto" and _oblique(b0_direction):
        report(progress, 0.0, "SS-TV: outside sources (B0 oblique to the grid)")
        ratio, background, whole_field_of_view = _outside_field(field_ppm, mask, full_weight, voxel_size_mm,
                                                                b0_direction, target, cancel)
        subtract = ratio < 1.0
        kernel_parameters.update(kernel="sampled" if subtract else "even", kernel_detail_ratio=ratio,
                                 outside_field_subtracted=subtract, whole_field_of_view=whole_field_of_view)
        if subtract:
            field_host = np.where(inside_host, frame(field_ppm - background), 0).astype(np.float32)
        del background
    del field_ppm, full_weight
    data = _smv_data(field_host, inside_host, shape, voxel_size_mm, radius)
    deep = data[0]
    if not deep.any():
        raise QSMInputError(f"SS-TV: no voxel lies {radius:g} mm inside the mask, so no field is left once the "
                            "background is filtered out. Use a smaller radius_mm or the 'tfi' inversion.")
    regularization, parameters = tv_regularization(
        regularization, data[1], deep, np.where(deep, weight, 0), voxel_size_mm, "SS-TV",
        None if field_sd_hz is None else frame(np.where(mask, hz_to_ppm(field_sd_hz, b0_tesla), 0)))
    use_edges = magnitude is not None and edge_fraction > 0
    if parameters.get("regularization_rule") == "noise-proportional":
        factor = SSTV_LAMBDA_FACTOR * (EDGE_LAMBDA_FACTOR if use_edges else 1.0)
        regularization *= factor
        parameters.update(regularization=regularization, regularization_rule=f"noise-proportional x{factor:g}")
    parameters["edge_fraction"] = edge_fraction if use_edges else 0.0
    parameters.update(kernel_parameters)
    tissue_weight = frame(free_edges(magnitude, mask, voxel_size_mm, edge_fraction)) if use_edges else 1.0
    solve = dict(shape=shape, voxel_size_mm=voxel_size_mm, data_penalty=data_penalty, max_iterations=max_iterations,
                 tolerance=tolerance, relaxation=relaxation, merit_every=merit_every, merit_factor=merit_factor,
                 target=target, progress=progress, cancel=cancel)
    kernel_of = even_dipole_kernel if kernel_parameters["kernel"] == "even" else dipole_kernel
    chi, smv_parameters = _single_step(
        field_host, weight, inside_host, kernel_of(shape, voxel_size_mm, b0_direction), radius,
        regularization, _soft_threshold(inside_host, tissue_weight, 1.0, 1.0 / 300.0), solve,
        progress_span=(0.0, 1.0), data=data)
    parameters.update(regularization=float(regularization), radius_mm=radius, tolerance=float(tolerance),
                      relaxation=float(relaxation), iterations=smv_parameters["smv_iterations"])
    if merit_every:
        parameters.update(merit_every=merit_every, merit_factor=merit_factor,
                          merit_voxels=smv_parameters["smv_merit_voxels"])
    edge_mm = _default_edge_mm(voxel_size_mm) if edge_mm is None else float(edge_mm)
    valid = erode(mask, edge_mm, voxel_size_mm)
    if not valid.any():
        raise QSMInputError(f"SS-TV: nothing of the mask is left after leaving out its outer {edge_mm:g} mm.")
    result = np.zeros(mask.shape, dtype=np.float32)
    result[box] = _fft.crop(target.to_numpy(chi), box_shape)
    result[~valid] = 0
    if level_slab_trend:
        result = _level_slab(result, valid, _slab_axes(mask, b0_direction), voxel_size_mm, parameters)
    report(progress, 1.0, "SS-TV done")
    return InversionResult(result, parameters, valid)


def blend_estimates(tfi_chi: np.ndarray, sstv_chi: np.ndarray, valid: np.ndarray,
                    voxel_size_mm: Sequence[float],
                    sstv_detail_weight: Optional[np.ndarray] = None,
                    smoothed_valid: Optional[dict[float, np.ndarray]] = None) -> tuple[np.ndarray, dict[str, float]]:
    """TFI's and SS-TV's chi combined, with TFI's share set apart for coarse and fine detail.

    ``share * tfi + (1 - share) * sstv``, plus ``TFI_COARSE_SHARE - share`` times the coarse part of
    their difference: its Gaussian smoothing (SD ``COARSE_SIGMA_MM``) normalised over ``valid`` (the
    smoothed difference divided by the smoothed mask), so that voxels outside it, which carry no estimate,
    do not pull the mean near the edge. Where the two differ by a constant, the result is
    ``TFI_COARSE_SHARE`` of the way from SS-TV to TFI; where they differ by detail much finer than the
    Gaussian, ``share`` of the way. ``share`` is ``TFI_SHARE`` unless the variance of SS-TV's finest
    detail (the map less its normalised smoothing of SD ``FINE_SIGMA_MM``) exceeds TFI's by a ratio in
    or above ``NOISY_DETAIL_RATIO``: then it rises linearly to ``MAX_TFI_SHARE`` at the range's end.
    Given ``sstv_detail_weight`` (a slab), TFI keeps all of the coarse part and SS-TV's share of the finer
    detail is scaled by it: ``tfi - w (1 - share) (difference - coarse)``.

    Parameters
    ----------
    tfi_chi, sstv_chi : numpy.ndarray, shape (n0, n1, n2)
        The two estimates of chi (ppm), valid on ``valid``.
    valid : numpy.ndarray of bool, shape (n0, n1, n2)
        Where both estimates are reported.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    sstv_detail_weight : numpy.ndarray of float32, shape (n0, n1, n2), optional
        0 to 1: how much of its share of the fine detail SS-TV gives (:func:`cut_face_fade`). None: the
        whole heads' blend.
    smoothed_valid : dict of float to numpy.ndarray, optional
        Kept by a caller that blends more than once on the same ``valid``: ``valid`` smoothed at each SD
        (mm, the key) is stored there by the first blend and reused by the next.

    Returns
    -------
    chi : numpy.ndarray of float32, shape (n0, n1, n2)
        The blended chi (ppm); 0 outside ``valid``.
    parameters : dict
        ``tfi_share`` (fine detail), ``fine_detail_ratio`` (SS-TV's finest detail variance over TFI's),
        ``tfi_coarse_share`` and ``coarse_sigma_mm``.
    """
    smoothed_valid = {} if smoothed_valid is None else smoothed_valid
    both = np.stack([tfi_chi, sstv_chi])
    smoothed, weight = masked_smoothing(both, valid, FINE_SIGMA_MM, voxel_size_mm,
                                        smoothed_valid.get(FINE_SIGMA_MM))
    smoothed_valid[FINE_SIGMA_MM] = weight
    finest = (both - smoothed / np.maximum(weight, np.float32(1e-6)))[:, valid]
    fine_variance = [float(np.var(detail, dtype=np.float64)) for detail in finest]
    ratio = fine_variance[1] / fine_variance[0] if fine_variance[0] > 0 else 1.0
    share = TFI_SHARE + (MAX_TFI_SHARE - TFI_SHARE) * _noisy_detail(ratio)
    difference = tfi_chi - sstv_chi
    smoothed, weight = masked_smoothing(difference, valid, COARSE_SIGMA_MM, voxel_size_mm,
                                        smoothed_valid.get(COARSE_SIGMA_MM))
    smoothed_valid[COARSE_SIGMA_MM] = weight
    coarse = smoothed / np.maximum(weight, np.float32(1e-6))
    if sstv_detail_weight is None:
        coarse_share = TFI_COARSE_SHARE
        blended = sstv_chi + np.float32(share) * difference + np.float32(coarse_share - share) * coarse
    else:
        coarse_share = 1.0
        blended = tfi_chi - sstv_detail_weight * np.float32(1.0 - share) * (difference - coarse)
    parameters = {"tfi_share": share, "fine_detail_ratio": ratio, "tfi_coarse_share": coarse_share,
                  "coarse_sigma_mm": COARSE_SIGMA_MM}
    return np.where(valid, blended, np.float32(0)).astype(np.float32), parameters


def _shell_frame(
    mask: np.ndarray, voxel_size_mm: Sequence[float], b0_direction: Sequence[float], margin_mm: float,
    cut_margin_mm: float, whole_field_of_view: bool = False,
) -> tuple[tuple[slice, ...], tuple[int, ...], list[list[int]], tuple[slice, ...], list[list[bool]]]:
    """TFI's frame: the box of ``mask`` with a shell of outside sources, and the FFT shape holding it.

    The shell is ``margin_mm`` thick, ``cut_margin_mm`` on a side where the mask comes within two voxels of
    the field of view's edge (phase quality often drops in the outermost slices) along an axis within 60
    degrees of B0. With ``whole_field_of_view`` the box is the whole grid, and the shell lies beyond it.
    Returns the box, the shape, the shell's thickness in voxels (before, after) per axis, the mask's own box
    and, per axis, whether it comes within two voxels of each end of the grid.
    """
    extent = _fft.mask_bounding_box(mask, [0, 0, 0])
    along_b0 = axes_along_b0(b0_direction)
    at_edge = [[part.start <= 2, part.stop >= n - 2] for part, n in zip(extent, mask.shape)]
    cut = [[along and side for side in pair] for pair, along in zip(at_edge, along_b0)]
    sides = [[int(np.ceil((cut_margin_mm if side else margin_mm) / float(v))) for side in pair]
             for pair, v in zip(cut, voxel_size_mm)]
    if whole_field_of_view:
        box = tuple(slice(0, n) for n in mask.shape)
        shape = _fft.padded_shape([n + before + after for n, (before, after) in zip(mask.shape, sides)], 1.0)
        return box, shape, sides, extent, at_edge
    box = _fft.mask_bounding_box(mask, sides)
    # a full shell of sources even where the field of view clips the box: the grid wraps round, so the
    # zeros after the box lie beyond both ends of the mask
    shape = _fft.padded_shape([max(part.stop - part.start, inner.stop - inner.start + before + after)
                               for part, inner, (before, after) in zip(box, extent, sides)], 1.0)
    return box, shape, sides, extent, at_edge


#: Upper bounds of a brain mask's extent (mm) for :func:`frame_voxels_estimate`, which sees no image: along B0,
#: and across it on the narrower and the wider of the other two axes (left-right, front-back). The suite's true
#: masks span 144-151 x 180-182 x 154-155 mm.
BRAIN_EXTENT_MM = {"along_b0": 160.0, "narrow": 155.0, "wide": 190.0}
#: A field of view shorter than this along B0 is taken to cut the brain at both faces (a slab or a crop), a
#: longer one at one face (a brainstem that reaches the field of view's edge).
SLAB_FIELD_OF_VIEW_MM = 165.0


def frame_voxels_estimate(shape: Sequence[int], voxel_size_mm: Sequence[float],
                          b0_axes: Sequence[bool] = (), method: str = "tfi") -> int:
    """Voxels of TFI's frame (:func:`_shell_frame`), or of SS-TV's (:func:`_smv_frame`), for a grid, estimated
    from its geometry alone.

    TFI's frame is the mask's box and a shell of ``MARGIN_MM``, ``CUT_MARGIN_MM`` beyond a face that cuts the
    brain along B0; SS-TV's is the mask's box and its ball's margin (default radius) beyond every face. Without
    the image the box is the field of view, at most :data:`BRAIN_EXTENT_MM`; along an axis within 60 degrees of
    B0 (``b0_axes``; unknown: the axis that gives the largest frame) the brain is taken as cut at both faces
    where the field of view is shorter than :data:`SLAB_FIELD_OF_VIEW_MM`, else at one. For a slab TFI's frame
    holds several times the scan's voxels and SS-TV's about as many as the scan: a cohort's memory estimate
    counts the frame of its inversion (:meth:`QSMLib.batch.layout.Acquisition.memory_bytes`). Against the
    frames of the suite's true masks, TFI's estimate (stop 66): 7.05-8.58 M against 7.46-8.75 M on four 1 mm
    slabs, 8.97 against 9.33 M on a 1.06 mm head cropped to its brain, 9.35 against 7.00 M on a whole 1 mm
    head; SS-TV's (stop 67): 1.65-2.97 M against 1.54-2.76 M on the slabs, 5.61 / 4.80 against 5.53 / 4.32 M on
    two whole heads.

    Parameters
    ----------
    shape : sequence of 3 int
        The grid's shape (voxels per array axis).
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.
    b0_axes : sequence of 3 bool, optional
        Per array axis, whether it lies within 60 degrees of B0; empty when the orientation is unknown.
    method : {"tfi", "sstv"}
        Whose frame.

    Returns
    -------
    int
        Voxels of the frame.

    Examples
    --------
    >>> frame_voxels_estimate((192, 224, 56), (1.0, 1.0, 1.0), (False, False, True))  # a 56 mm axial slab
    7661200
    >>> frame_voxels_estimate((192, 224, 56), (1.0, 1.0, 1.0), (False, False, True), "sstv")  # 5 voxels a side
    2178000
    """
    if method not in ("tfi", "sstv"):
        raise ValueError(f"frame_voxels_estimate: method must be 'tfi' or 'sstv', got {method!r}")
    if not b0_axes:
        return max(frame_voxels_estimate(shape, voxel_size_mm, [axis == along for axis in range(3)], method)
                   for along in range(3))
    extents = [float(n) * float(v) for n, v in zip(shape, voxel_size_mm)]
    across = sorted((axis for axis in range(3) if not b0_axes[axis]), key=lambda axis: extents[axis])
    # the narrower of two axes across B0 takes the brain's width, the wider (or a single one) its length
    limits = dict(zip(across, [BRAIN_EXTENT_MM["narrow"], BRAIN_EXTENT_MM["wide"]][2 - len(across):]))
    radius_mm = _smv_radius(None, voxel_size_mm)
    voxels = 1
    for axis, (extent, voxel) in enumerate(zip(extents, voxel_size_mm)):
        box = min(extent, BRAIN_EXTENT_MM["along_b0"] if b0_axes[axis] else limits[axis])
        if method == "sstv":
            voxels *= math.ceil(box / float(voxel)) + 2 * (math.ceil(radius_mm / float(voxel)) + 1)
            continue
        if b0_axes[axis]:
            shell = 2 * CUT_MARGIN_MM if extent < SLAB_FIELD_OF_VIEW_MM else CUT_MARGIN_MM + MARGIN_MM
        else:
            shell = 2 * MARGIN_MM
        voxels *= math.ceil((box + shell) / float(voxel))
    return voxels


def _outside_field(
    field_ppm: np.ndarray, mask: np.ndarray, weight: np.ndarray, voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float], target: Device, cancel: CancelToken,
) -> tuple[float, np.ndarray, bool]:
    """SS-TV's ripple test (:func:`_ripple_test`) on TFI's frame, from TFI's start of the outside sources.

    Where the field has the ripple, the sources are found again on a frame of the whole field of view, as TFI
    finds them. Returns the detail ratio, the field (ppm, on ``mask``'s grid, 0 outside it) of the sources
    through the sampled kernel, and whether they were found on the whole field of view.
    """
    for whole_field_of_view in (False, True):
        box, shape, *_ = _shell_frame(mask, voxel_size_mm, b0_direction, MARGIN_MM, CUT_MARGIN_MM,
                                      whole_field_of_view)
        field_host = to_frame(field_ppm, box, shape)
        inside_host = to_frame(mask, box, shape) > 0
        weight_framed = to_frame(weight, box, shape)
        field, inside, weight_squared = (target.to_device(a) for a in (field_host, inside_host,
                                                                        weight_framed * weight_framed))
        kernel = target.to_device(dipole_kernel(shape, voxel_size_mm, b0_direction))
        sources = _background_sources(field, weight_squared, inside, kernel, voxel_size_mm, b0_direction,
                                      PDF_ITERATIONS, target.to_device, cancel)
        ratio, _, _, background = _ripple_test(field, weight_squared, inside, kernel, sources, field_host,
                                               inside_host, target, cancel, refine=whole_field_of_view)
        if ratio >= 1.0 or whole_field_of_view:
            break
    return ratio, from_frame(target.to_numpy(background), box, mask), whole_field_of_view


def _ripple_test(
    field: Any, weight_squared: Any, inside: Any, kernel: Any, sources: Any, field_host: np.ndarray,
    inside_host: np.ndarray, target: Device, cancel: CancelToken, refine: bool = True,
) -> tuple[float, Any, Any, Any]:
    """Whether the field carries the sampled kernel's Nyquist ripple, and the outside sources that match it.

    ``sources`` (outside ``inside``, on the solver's device) are the start of :func:`_background_sources`;
    ``kernel`` is sampled. The ratio is the finest detail (:func:`_detail_ratio`) of the field less their
    field over that of the field: below 1, the ripple is in the field (it was simulated with the sampled
    kernel), and since it lies at the finest scale, which the coarse start leaves out, the sources get
    ``RIPPLE_ITERATIONS`` more conjugate-gradient iterations on the full grid, all of them (no tolerance:
    stopped at 1e-3, numpy and another array library stopped an iteration apart on a test head, and their
    fields differed by 0.2 %), unless ``refine`` is false. Returns the ratio, the sources, their spectrum and
    their field through ``kernel``.
    """
    shape = tuple(inside_host.shape)
    spectrum = _backend.rfftn(sources)
    background = _backend.irfftn(spectrum * kernel, shape)
    ratio = _detail_ratio(field_host, field_host - target.to_numpy(background), inside_host)
    if ratio < 1.0 and refine:
        sources = _project_outside(field, weight_squared, inside, kernel, sources, RIPPLE_ITERATIONS, cancel, 0.0)
        spectrum = _backend.rfftn(sources)
        background = _backend.irfftn(spectrum * kernel, shape)
    return ratio, sources, spectrum, background


def _without_kernel_ripple(
    field_host: np.ndarray, inside_host: np.ndarray, chi_host: np.ndarray, kernel_host: np.ndarray,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, dict[str, Any]]:
    """The single-step solve's total field: less the field of TFI's outside sources where that removes detail.

    The SMV filter removes a background only where it is harmonic in the ball. A background computed with the
    dipole kernel sampled on the grid (as simulators such as qsm-forward compute it) is not where B0 is oblique
    to the grid: the sampled kernel jumps at the edge of k-space, and air's strong field brings a Nyquist
    ripple into the brain that the filter passes and the solve fits (suite case ``qsmforward_oblique_1p06mm``).
    TFI's outside sources, seen through the same kind of kernel, carry that ripple, so subtracting their field
    removes it; but a measured field has no such ripple (nor the suite's heads simulated on a finer grid), and
    there the subtraction adds it. Hence it is kept only where it lowers the field's finest detail
    (:func:`~QSMLib.inversion._regularization.field_noise`): measured 0.44 times on that case (0.29 since TFI
    refines its sources for the ripple, :func:`_ripple_test`); on the five
    suite heads with B0 oblique to a grid simulated twice as fine 1.6-3.2 times through the sampled kernel and
    about 1.5 through the even kernel that TFI takes for them (1.54 and 1.46 on the two measured); 1.00-1.03
    with B0 along an axis, where either way gives the same chi within 0.1 point.
    """
    outside = np.where(inside_host, 0, chi_host).astype(np.float32)
    corrected = np.where(inside_host, field_host - _fft.irfftn(_fft.rfftn(outside) * kernel_host, shape),
                         0).astype(np.float32)
    ratio = _detail_ratio(field_host, corrected, inside_host)
    subtract = ratio < 1.0
    parameters = {"smv_outside_field_subtracted": bool(subtract), "smv_detail_ratio": ratio}
    return (corrected if subtract else field_host), parameters


def _detail_ratio(field_host: np.ndarray, corrected: np.ndarray, inside_host: np.ndarray) -> float:
    """The finest detail (:func:`field_noise`, which reads only blocks inside ``inside_host``) of ``corrected``
    over that of ``field_host``."""
    detail = field_noise(field_host, inside_host)
    return float(field_noise(corrected, inside_host) / detail) if detail > 0 else 1.0


def _oblique(b0_direction: Sequence[float]) -> bool:
    """Whether B0 is oblique to the grid (more than one non-zero component), where the sampled kernel jumps."""
    return int(np.count_nonzero(np.asarray(b0_direction, dtype=np.float64))) > 1


def _default_edge_fraction(voxel_size_mm: Sequence[float]) -> float:
    """TFI's automatic ``edge_fraction``: interpolated in ``EDGE_FRACTIONS`` at the voxel size (mm, cube root of
    the voxel's volume), constant beyond its ends."""
    sizes, fractions = zip(*EDGE_FRACTIONS)
    return float(np.interp(mean_voxel_mm(voxel_size_mm), sizes, fractions))


def _check_relaxation(label: str, relaxation: float) -> None:
    # ADMM converges for over-relaxation in (0, 2) (Eckstein & Bertsekas 1992)
    if not 0 < relaxation < 2:
        raise QSMInputError(f"{label}: relaxation must lie in (0, 2) (1, the default: plain ADMM), "
                            f"got {relaxation!r}.")


def _default_tolerance(voxel_size_mm: Sequence[float], relaxation: float, per_mm: float = TOLERANCE_PER_MM) -> float:
    """The automatic stopping tolerance: ``per_mm`` per mm of voxel size, at most ``MAX_AUTO_TOLERANCE``, and
    ``RELAXED_TOLERANCE_FACTOR`` times that where the ADMM is over-relaxed (``relaxation`` above 1)."""
    plain = min(MAX_AUTO_TOLERANCE, per_mm * mean_voxel_mm(voxel_size_mm))
    return plain * (RELAXED_TOLERANCE_FACTOR if relaxation > 1 else 1.0)


def _local_noise_factor(parameters: dict[str, Any]) -> float:
    """How much a local field's automatic lambda grows where its noise swamps the field (1 elsewhere).

    The ratio of the measured noise per voxel to the model-error floor
    (``LOCAL_MODEL_ERROR_FRACTION`` times the field's RMS, both ppm) over
    ``LOCAL_NOISE_RATIO_KNEE``, at least 1; recorded in ``parameters`` as
    ``noise_to_model_error``.
    """
    floor = LOCAL_MODEL_ERROR_FRACTION * parameters["field_rms_ppm"]
    ratio = parameters["noise_ppm"] / floor if floor > 0 else 0.0
    parameters["noise_to_model_error"] = ratio
    return max(1.0, ratio / LOCAL_NOISE_RATIO_KNEE)


def _default_edge_mm(voxel_size_mm: Sequence[float]) -> float:
    """Width (mm) of the mask's outer band left out of the reported chi: 2.5 mm or one voxel, the larger."""
    return max(2.5, float(max(voxel_size_mm)))


def _check_prior_settings(label: str, merit_every: Any, edge_fraction: float) -> None:
    """Refuse a ``merit_every`` that is not a whole number >= 0 and an ``edge_fraction`` outside [0, 1)."""
    if isinstance(merit_every, bool) or not isinstance(merit_every, (int, np.integer)) or merit_every < 0:
        raise QSMInputError(f"{label}: merit_every must be a whole number of iterations (0 turns MERIT off), "
                            f"got {merit_every!r}.")
    if not 0 <= edge_fraction < 1:
        raise QSMInputError(f"{label}: edge_fraction must lie in [0, 1), got {edge_fraction!r}.")


def _soft_threshold(tissue: np.ndarray, tissue_weight: Union[np.ndarray, float], outside_weight: float,
                    ratio: float) -> np.ndarray:
    """The gradient split's soft threshold ``omega lambda / rho`` (``ratio`` is ``lambda / rho``, by default 1/300):
    ``omega`` is ``tissue_weight`` on ``tissue`` and ``outside_weight`` elsewhere."""
    ratio = np.float32(ratio)
    return np.where(tissue, ratio * tissue_weight, ratio * np.float32(outside_weight)).astype(np.float32)


def _cut_share(mask: np.ndarray, extent: Sequence[slice], cut: Sequence[Sequence[bool]], radius_mm: float,
               voxel_size_mm: Sequence[float]) -> float:
    """Share of ``mask`` within ``radius_mm`` of the faces of its bounding box ``extent`` flagged in ``cut``."""
    near = np.zeros(mask.shape, dtype=bool)
    for axis, (part, (before, after), voxel) in enumerate(zip(extent, cut, voxel_size_mm)):
        depth = int(np.ceil(radius_mm / float(voxel)))
        for flagged, band in ((before, slice(part.start, part.start + depth)),
                              (after, slice(max(part.stop - depth, 0), part.stop))):
            if flagged:
                near[(slice(None),) * axis + (band,)] = True
    return float(np.count_nonzero(mask & near)) / float(np.count_nonzero(mask))


def cut_face_fade(shape: Sequence[int], extent: Sequence[slice], cut: Sequence[Sequence[bool]], radius_mm: float,
                  voxel_size_mm: Sequence[float]) -> np.ndarray:
    """SS-TV's weight in a slab's blend: 0 within ``CUT_FACE_FADE[0]`` times ``radius_mm`` of the flagged faces
    of the mask's box ``extent`` (where the field of view cuts the mask), rising linearly to 1 at
    ``CUT_FACE_FADE[1]`` times it.

    Parameters
    ----------
    shape : sequence of 3 int
        The grid's shape.
    extent : sequence of 3 slice
        The mask's bounding box.
    cut : sequence of 3 (bool, bool)
        Per axis, whether the field of view cuts the mask at the box's low and high face.
    radius_mm : float
        SS-TV's SMV radius (mm).
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.

    Returns
    -------
    numpy.ndarray of float32, shape ``shape``
        The weight, 1 everywhere when no face is flagged.
    """
    distance_mm = np.full(tuple(shape), np.inf, dtype=np.float32)
    for axis, (part, (before, after), voxel) in enumerate(zip(extent, cut, voxel_size_mm)):
        index = np.arange(shape[axis], dtype=np.float32)
        view = [1, 1, 1]
        view[axis] = shape[axis]
        for flagged, depth in ((before, index - part.start), (after, part.stop - 1 - index)):
            if flagged:
                distance_mm = np.minimum(distance_mm, (np.abs(depth) * np.float32(voxel)).reshape(view))
    near, far = (radius_mm * multiple for multiple in CUT_FACE_FADE)
    return np.clip((distance_mm - np.float32(near)) / np.float32(far - near), 0.0, 1.0).astype(np.float32)


def _slab_axes(mask: np.ndarray, b0_direction: Sequence[float]) -> list[int]:
    """The axes within 60 degrees of B0 along which the field of view cuts ``mask`` at both ends (a slab)."""
    return [axis for axis, ends in faces_cutting_mask(mask, b0_direction).items() if all(ends)]


def _level_slab(chi: np.ndarray, valid: np.ndarray, slab_axes: Sequence[int], voxel_size_mm: Sequence[float],
                parameters: dict[str, Any]) -> np.ndarray:
    """:func:`level_trend` along ``slab_axes`` (:func:`_slab_axes`; none: ``chi`` as it is), the slopes removed
    recorded in ``parameters`` (``slab_trend_removed_ppb_per_cm``)."""
    if not slab_axes:
        return chi
    chi, slopes = level_trend(chi, valid, slab_axes, voxel_size_mm)
    parameters["slab_trend_removed_ppb_per_cm"] = {f"axis {axis}": slope for axis, slope in slopes.items()}
    return chi


def level_trend(chi: np.ndarray, valid: np.ndarray, axes: Sequence[int],
                voxel_size_mm: Sequence[float]) -> tuple[np.ndarray, dict[int, float]]:
    """``chi`` less the linear trend along each of ``axes`` that makes its median gradient there 0.

    A susceptibility that changes linearly makes a field that is harmonic
    inside the mask, which sources outside it make as well: the data leave
    such a trend free. Along an axis a slab is cut on, TFI's thick shell of
    sources beyond the field of view sets it (SS-TV's prior, whose filter
    removes that field, sets it alone). Its value here is the one the
    tissue's own total variation prefers: the L1 fit of a constant to chi's
    differences between neighbours along the axis, their median. The trend
    is removed about the mean position of the valid voxels, so their mean
    does not change.

    Parameters
    ----------
    chi : numpy.ndarray, shape (n0, n1, n2)
        Susceptibility (ppm), valid on ``valid``.
    valid : numpy.ndarray of bool, shape (n0, n1, n2)
        The voxels that hold an estimate.
    axes : sequence of int
        Array axes to level.
    voxel_size_mm : sequence of 3 float
        Voxel size in mm per array axis.

    Returns
    -------
    chi : numpy.ndarray of float32, shape (n0, n1, n2)
        Levelled (0 outside ``valid``).
    slopes : dict
        Per axis, the trend removed, ppb per cm.

    Examples
    --------
    >>> chi = np.zeros((4, 4, 8), np.float32)
    >>> chi[...] = 0.001 * np.arange(8)  # 1 ppb per voxel along axis 2
    >>> levelled, slopes = level_trend(chi, np.ones(chi.shape, bool), [2], (1.0, 1.0, 2.0))
    >>> round(slopes[2], 6), bool(np.ptp(levelled) < 1e-6), round(float(levelled.mean()), 4)
    (5.0, True, 0.0035)
    """
    levelled = np.asarray(chi, dtype=np.float64).copy()
    slopes = {}
    for axis in axes:
        first = (slice(None),) * axis + (slice(0, -1),)
        second = (slice(None),) * axis + (slice(1, None),)
        pairs = valid[first] & valid[second]
        if not pairs.any():
            continue
        slope = float(np.median((levelled[second] - levelled[first])[pairs])) / float(voxel_size_mm[axis])
        position = (np.arange(chi.shape[axis]) * float(voxel_size_mm[axis])).reshape(
            [-1 if other == axis else 1 for other in range(3)])
        centre = float(np.broadcast_to(position, chi.shape)[valid].mean())
        levelled -= slope * (position - centre)
        slopes[int(axis)] = 1e4 * slope
    return np.where(valid, levelled, 0).astype(np.float32), slopes


def _smv_radius(radius_mm: Optional[float], voxel_size_mm: Sequence[float]) -> float:
    """The single-step solve's SMV radius, mm: ``radius_mm``, or by default ``SMV_RADIUS_VOXELS`` voxels within
    ``SMV_RADIUS_RANGE_MM``, and at least ``SMV_MIN_RADIUS_VOXELS`` of the largest voxel side."""
    if radius_mm is not None:
        return float(radius_mm)
    low, high = SMV_RADIUS_RANGE_MM
    radius = float(np.clip(SMV_RADIUS_VOXELS * mean_voxel_mm(voxel_size_mm), low, high))
    # voxels over 4 mm: a ball of 6 mm would hold the centre voxel alone, and S (voxel less its ball's mean) be 0
    return max(radius, SMV_MIN_RADIUS_VOXELS * float(max(voxel_size_mm)))


def _smv_frame(mask: np.ndarray, radius_mm: float, voxel_size_mm: Sequence[float],
               pad_factor: float = 1.0) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Where a single-step solve runs: the box of ``mask`` and the ball's margin, and the FFT shape holding it.

    The ball must not wrap round the frame: the margin lies around the mask's box, also where the box is
    clipped by the edge of ``mask``'s grid (the frame wraps round, so the zeros after the box lie beyond
    both ends). No more padding is needed: a periodic copy's chi lies outside the mask, so its field is
    harmonic in every ball of the data and the filter removes it like any background (frames padded 1.15
    against none on the eleven whole-head suite cases, ``fast`` preset: chi NRMSE within 0.03 points, the
    whole run 10-25 % slower; a slab without the margin beyond its cut faces: 299 against 40 %).
    """
    margin = [int(np.ceil(radius_mm / float(v))) + 1 for v in voxel_size_mm]
    extent = _fft.mask_bounding_box(mask, [0, 0, 0])
    box = _fft.mask_bounding_box(mask, margin)
    lengths = [max(part.stop - part.start, inner.stop - inner.start + 2 * m)
               for part, inner, m in zip(box, extent, margin)]
    return box, _fft.padded_shape(lengths, pad_factor)


def _smv_data(
    field_host: np.ndarray, inside_host: np.ndarray, shape: tuple[int, ...], voxel_size_mm: Sequence[float],
    radius_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The single-step data: the voxels whose ball of ``radius_mm`` lies in the mask, ``S f`` there (0 elsewhere),
    and the SMV filter ``S = 1 - ball`` in k-space (the rfft half of ``shape``)."""
    ball = sphere_kernel(shape, voxel_size_mm, radius_mm)
    deep = ball_interior(_fft.rfftn(inside_host.astype(np.float32)), ball, shape) & inside_host
    smv = (1.0 - ball).astype(np.float32)
    field = np.where(deep, _fft.irfftn(_fft.rfftn(field_host) * smv, shape), 0).astype(np.float32)
    return deep, field, smv


def _single_step(
    field_host: np.ndarray,
    weight_host: np.ndarray,
    inside_host: np.ndarray,
    kernel_host: np.ndarray,
    radius_mm: float,
    regularization: float,
    threshold: np.ndarray,
    solve: dict[str, Any],
    progress_span: tuple[float, float] = (0.6, 1.0),
    data: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
    start: Any = None,
    split: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Single-step TV from the SMV-filtered total field (SS-TV); chi on the solver's device and its parameters.

    ``S f = S D chi`` holds exactly on the voxels whose ball of ``radius_mm`` lies in the mask: there
    the SMV filter ``S`` (the voxel less its ball's mean) removes every field harmonic in the ball,
    which the outside sources' field is. So the data need no outside sources, and they fit no tissue
    field with them. ``data`` is :func:`_smv_data`'s result when the caller has it, ``start`` chi to
    start from (on the solver's device; default zero), ``split`` the ADMM's data split ``y`` to continue
    from (on the device, updated in place; default the filtered field). Returns ``None`` for chi where no
    voxel lies that deep in the mask.
    """
    target = solve["target"]
    shape = solve["shape"]
    deep, field, smv = data or _smv_data(field_host, inside_host, shape, solve["voxel_size_mm"], radius_mm)
    parameters: dict[str, Any] = {"smv_radius_mm": radius_mm}
    if not deep.any():
        parameters["smv_skipped"] = f"no voxel lies {radius_mm:g} mm inside the mask"
        return None, parameters
    weight = np.where(deep, weight_host, 0).astype(np.float32)
    chi, iterations, merit_voxels = _admm(
        target.to_device(np.zeros(shape, dtype=np.float32)) if start is None else start,
        target.to_device(field.copy()) if split is None else split, target.to_device(field),
        target.to_device(weight), target.to_device(deep), (kernel_host * smv).astype(np.float32),
        target.to_device(threshold), float(regularization), label="single-step TV", progress_span=progress_span,
        change_region=target.to_device(inside_host), warm_start=start is not None, **solve)
    parameters.update(smv_regularization=float(regularization), smv_iterations=iterations)
    if solve["merit_every"]:
        parameters["smv_merit_voxels"] = merit_voxels
    return chi, parameters


def _noisy_detail(fine_detail_ratio: float) -> float:
    """0, rising linearly to 1 across ``NOISY_DETAIL_RATIO``: how far SS-TV's finest detail variance over
    TFI's (:func:`blend_estimates`) says that detail is noise."""
    low, high = NOISY_DETAIL_RATIO
    return float(np.clip((fine_detail_ratio - low) / (high - low), 0.0, 1.0))


def _noise_guard(fine_detail_ratio: float) -> float:
    """How much of the Bregman step's gain to use: where the fine detail is noise (:func:`_noisy_detail`),
    so is most of what the data terms leave unexplained."""
    return 1.0 - _noisy_detail(fine_detail_ratio)


def _bregman_data(field: Any, chi: Any, kernel: Any, weight: Any, region: Any, shape: Sequence[int], gain: float,
                  merit_factor: Optional[float]) -> tuple[Any, Any]:
    """The data and data weight of a Bregman step: ``f + gain r``, ``r = f - D chi`` on ``region`` (0 elsewhere).

    ``kernel`` is the data term's (half spectrum), ``weight`` its data weight ``W`` and ``region`` where it
    applies; all on ``chi``'s device. With ``merit_factor`` (MERIT on), the weight is MERIT's for this
    residual (:func:`~QSMLib.inversion._regularization.merit_weight`), so that the step starts from weights
    that keep out a field no dipole explains (a phase error, bone or air at the mask's edge), and ``r`` is
    scaled by the same factor: such a field is not given back. Without it, ``weight`` itself.
    """
    xp = _backend.namespace(field)
    residual = xp.where(region, field - _backend.irfftn(_backend.rfftn(chi) * kernel, shape),
                        _backend.scalar(field, 0.0))
    if merit_factor is not None:
        trusted, _ = merit_weight(weight, weight * residual, region, merit_factor)
        residual = residual * (trusted / xp.maximum(weight, _backend.scalar(weight, 1e-12)))
        weight = trusted
    return field + _backend.scalar(field, gain) * residual, weight


def _admm(
    chi: Any,
    y: Any,
    field: Any,
    weight: Any,
    inside: Any,
    kernel_host: np.ndarray,
    threshold: Any,
    regularization: float,
    *,
    shape: tuple[int, ...],
    voxel_size_mm: Sequence[float],
    data_penalty: float,
    max_iterations: int,
    tolerance: float,
    relaxation: float,
    merit_every: int,
    merit_factor: float,
    target: Device,
    label: str,
    progress_span: tuple[float, float],
    progress: ProgressCallback,
    cancel: CancelToken,
    change_region: Any = None,
    warm_start: bool = False,
) -> tuple[Any, int, int]:
    """``min 1/2 ||W (D chi - f)||^2 + lambda ||omega grad chi||_1`` by ADMM from ``chi`` (``y`` its data split),
    its split and dual steps over-relaxed by ``relaxation``.

    ``threshold`` is ``omega lambda / rho``, with ``rho = 300 lambda``; ``inside`` is where the data
    term (and MERIT) apply, ``change_region`` where the stopping rule measures the change of ``chi``
    (default ``inside``); ``warm_start``: ``chi`` is a finished solve's (under another prior), so the
    rule is not tested after the first iteration. Arrays are on ``target``'s device; ``kernel_host``
    (the data term's kernel) on the host. Returns chi, the iterations run and the voxels MERIT's last
    step down-weighted.
    """
    rho = np.float32(300.0 * regularization)
    mu = np.float32(data_penalty)
    denominator = mu * kernel_host * kernel_host + rho * gradient_eigenvalues(shape, voxel_size_mm)
    denominator[0, 0, 0] = 1.0
    data_factor = target.to_device((mu * kernel_host / denominator).astype(np.float32))
    gradient_factor = target.to_device((rho / denominator).astype(np.float32))
    kernel = target.to_device(kernel_host)
    del denominator
    mu = float(mu)
    change_region = inside if change_region is None else change_region
    weighted_field, inverse = linear_update_terms(field, weight * weight, mu)
    merit_voxels = 0
    u = _backend.float32_array(chi, shape, zeros=True)
    z = gradient(chi, voxel_size_mm)
    w = _backend.float32_array(chi, (3, *shape), zeros=True)
    grad = _backend.float32_array(chi, (3, *shape))
    work = _backend.float32_array(chi, shape)
    start, stop = progress_span
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        check_cancel(cancel)
        new_chi, field_of_chi = admm_chi_step(z, w, y, u, grad, work, gradient_factor, data_factor, kernel,
                                              voxel_size_mm, shape)
        # convergence of the tissue only: the background sources are far larger and converge slower
        change = relative_change(new_chi, chi, change_region)
        chi = new_chi

        check_cancel(cancel)
        admm_gradient_step(chi, z, w, grad, threshold, work, voxel_size_mm, relaxation)
        if merit_every and iterations % merit_every == 0:
            weight, merit_voxels = merit_weight(weight, weight * (field_of_chi - field), inside, merit_factor)
            weighted_field, inverse = linear_update_terms(field, weight * weight, mu)
        admm_data_step(u, y, field_of_chi, weighted_field, inverse, mu, relaxation)
        report(progress, start + (stop - start) * iterations / max_iterations,
               f"{label} iteration {iterations}, change {change:.1e}")
        # a warm start's first chi step, from the split variables' restart (z = grad chi, w = 0), barely
        # moves chi whatever the prior: the prior acts from the gradient step after it (on the 0.7 mm slab,
        # TFI alone, stopping there left the second pass without effect: 27.8 against 24.6 % chi NRMSE)
        if change < tolerance and not (warm_start and iterations == 1):
            break
    return chi, iterations, merit_voxels


def _background_sources(
    field: Any,
    weight_squared: Any,
    inside: Any,
    kernel: Any,
    voxel_size_mm: Sequence[float],
    b0_direction: Sequence[float],
    coarse_iterations: int,
    to_device: Callable[[np.ndarray], Any],
    cancel: CancelToken,
) -> Any:
    """Sources outside the mask whose field best matches ``field`` inside (projection onto dipole fields).

    The starting point of the ADMM: the background sources are ~100 times
    the tissue's susceptibility, and from zero the splitting would first
    explain the background with tissue sources (Liu et al. need a
    preconditioner for the same reason). Conjugate gradients converge slowly
    on the sources' smooth, distant part, so it is found on a grid twice as
    coarse (an eighth of the cost per iteration) and refined by
    ``FINE_ITERATIONS`` on the full grid. On three suite cases (exact total
    field, true mask) this gave chi NRMSE 42.2 / 25.9 / 31.5 % against
    45.0 / 28.8 / 36.0 % for 30 full-grid iterations, with 30 % fewer
    full-grid FFTs. Arrays are on the solver's device (any array-API
    namespace); ``to_device`` moves a numpy array there.
    """
    xp = _backend.namespace(field)
    shape = tuple(inside.shape)
    even = tuple(n - n % 2 for n in shape)
    crop = tuple(slice(0, n) for n in even)

    def halve(volume: Any) -> Any:
        blocks = xp.reshape(volume[crop], (even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2))
        return xp.mean(blocks, axis=(1, 3, 5))

    coarse_weight = halve(weight_squared)
    coarse_field = halve(field * weight_squared) / xp.maximum(coarse_weight, _backend.scalar(field, 1e-12))
    coarse_inside = halve(_backend.copy(inside, xp.float32)) > 0.5
    coarse_kernel = to_device(dipole_kernel(tuple(coarse_inside.shape), [2.0 * v for v in voxel_size_mm], b0_direction))
    coarse = _project_outside(coarse_field, coarse_weight, coarse_inside, coarse_kernel, None, coarse_iterations,
                              cancel)
    start = _backend.float32_array(field, shape, zeros=True)
    start[crop] = xp.repeat(xp.repeat(xp.repeat(coarse, 2, axis=0), 2, axis=1), 2, axis=2)
    return _project_outside(field, weight_squared, inside, kernel, start, FINE_ITERATIONS, cancel)


def _project_outside(
    field: Any,
    weight_squared: Any,
    inside: Any,
    kernel: Any,
    start: Optional[Any],
    iterations: int,
    cancel: CancelToken,
    tolerance: float = 1e-3,
) -> Any:
    """Weighted least-squares sources outside ``inside`` for ``field`` inside it, by CG from ``start``."""
    xp = _backend.namespace(field)
    shape = tuple(inside.shape)
    outside = ~inside
    zero = _backend.scalar(field, 0.0)

    def convolve(volume: Any) -> Any:
        return _backend.irfftn(_backend.rfftn(volume) * kernel, shape)

    def normal(sources: Any) -> Any:
        result = convolve(weight_squared * convolve(xp.where(outside, sources, zero)))
        result[inside] = 0
        return result

    rhs = convolve(weight_squared * field)
    rhs[inside] = 0
    if start is not None:
        start[inside] = 0
    sources, _ = conjugate_gradient(normal, rhs, start, tolerance=tolerance, max_iterations=iterations, cancel=cancel)
    sources[inside] = 0
    return sources
