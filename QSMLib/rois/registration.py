"""Register a GRE acquisition to the MNI152 template: affine by mutual information, then diffeomorphic demons.

A GRE magnitude does not look like the T1 template, and its contrast changes
with the protocol (flip angle, echo times, field strength). Two steps cope
with that:

1. Affine: Mattes mutual information between the subject's echo-combined,
   bias-corrected magnitude and the T1 template (any monotone or not
   relation between the contrasts), started from the images' physical
   geometry (their affines, so any orientation and obliquity) with the brains'
   centres of mass aligned and the best of a grid of rotations (a tilted
   head), on 4 mm and 2 mm grids.
2. Nonlinear: a synthetic template in the subject's own contrast, the
   least-squares combination of the template's grey matter, white matter and
   CSF maps and one indicator per deep grey matter structure that best fits
   the subject's intensities where the affine maps them (so the iron-rich
   nuclei get whatever contrast they have in this scan, dark in the
   magnitude, bright in chi); the subject is then registered to it by
   symmetric-forces demons (a sum-of-squares metric), on a 4 mm grid over
   the brain, then a 2 mm grid over the deep grey matter, refitting the
   synthetic template at each level.
   Susceptibility, when given, is a second channel of the same images (it
   has the contrast of the iron-rich nuclei that the magnitude lacks at short
   echo times).

The result maps subject points to template points (LPS mm), for
:mod:`.labels` to bring the atlas back.

References
----------
Mattes D, Haynor DR, Vesselle H, Lewellen TK, Eubank W. PET-CT image
registration in the chest using free-form deformations. IEEE TMI
2003;22:120-128.
Thirion JP. Image matching as a diffusion process: an analogy with
Maxwell's demons. Med Image Anal 1998;2:243-260.
Vercauteren T, Pennec X, Perchant A, Ayache N. Diffeomorphic demons:
efficient non-parametric image registration. NeuroImage 2009;45:S61-S72.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from .._operators import masked_smoothing
from .._progress import CancelToken, ProgressCallback, check_cancel, report
from ..errors import QSMInputError
from ..io.nifti import image_from_array
from .template import AAL3_STRUCTURES, TemplateFeatures, template_features

#: Grid of the nonlinear levels (mm) and demons iterations per level.
DEMONS_LEVELS_MM = (4.0, 2.0)
DEMONS_ITERATIONS = (40, 30)
#: Smoothing of the demons displacement field, SD in voxels of each level.
DEMONS_SMOOTHING_VOXELS = 1.5
#: Rotation search of the rigid start: steps each side about x (pitch), y (roll), z (yaw), and step size.
ROTATION_SEARCH_STEPS = (3, 2, 2)
ROTATION_SEARCH_STEP_DEG = 10.0
#: Margin (mm) around the deep grey matter of the box that the finer demons levels refine.
DEEP_GREY_MARGIN_MM = 20.0
#: Voxels (of each demons level) by which the template's brain is grown before it trims the subject's mask.
BRAIN_MARGIN_VOXELS = 1
#: Scale (mm) of the receive-coil bias removed from the magnitude before registration.
BIAS_SCALE_MM = 25.0


@dataclass
class Registration:
    """Subject -> template mapping and how well it fits.

    Attributes
    ----------
    transform : SimpleITK.Transform
        Maps subject physical points (LPS mm) to template points.
    affine_metric : float
        Final Mattes mutual information of the affine step (negative; lower
        is better).
    similarity : float
        Correlation of the subject with its synthetic template through the
        final mapping, inside the brain over the last level's box around the
        deep grey matter (1 = perfect; 0.78-0.87 on the warped suite heads).
    seconds : dict of str to float
        Time per step.
    parameters : dict
        Settings used and values chosen from the data (the synthetic
        template's weights).
    """

    transform: sitk.Transform
    affine_metric: float
    similarity: float
    seconds: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def combined_magnitude(magnitude: np.ndarray) -> np.ndarray:
    """Root mean square over echoes of a (echo, n0, n1, n2) magnitude (or a 3D one as it is), float32."""
    magnitude = np.asarray(magnitude, np.float32)
    if magnitude.ndim == 3:
        return magnitude
    if magnitude.ndim != 4:
        raise QSMInputError(f"The magnitude must be 3D or (echo, n0, n1, n2), got shape {magnitude.shape}.")
    return np.sqrt(np.mean(np.square(magnitude), axis=0)).astype(np.float32)


def _bias_corrected(values: np.ndarray, mask: np.ndarray, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """``values`` divided by their smooth local mean inside ``mask`` (a receive-coil bias removed), 0 outside."""
    local, weight = masked_smoothing(values, mask, BIAS_SCALE_MM, voxel_size_mm)
    smooth = local / np.maximum(weight, 1e-3)
    corrected = np.where(mask, values / np.maximum(smooth, 1e-12 * max(float(smooth.max()), 1e-30)), 0.0)
    return corrected.astype(np.float32)


def _level_grid(mask_image: sitk.Image, spacing_mm: float, margin_mm: float = 8.0) -> sitk.Image:
    """An empty float image of ``spacing_mm`` voxels, oriented as the subject, over the mask's bounding box."""
    mask = sitk.GetArrayViewFromImage(mask_image) > 0
    index = np.argwhere(mask)[:, ::-1]
    spacing = np.array(mask_image.GetSpacing())
    low = index.min(axis=0) - margin_mm / spacing
    high = index.max(axis=0) + margin_mm / spacing
    size = np.ceil((high - low) * spacing / spacing_mm).astype(int) + 1
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing((float(spacing_mm),) * 3)
    grid.SetDirection(mask_image.GetDirection())
    grid.SetOrigin(mask_image.TransformContinuousIndexToPhysicalPoint([float(v) for v in low]))
    return grid


def _on_grid(image: sitk.Image, grid: sitk.Image, nearest: bool = False) -> sitk.Image:
    """``image`` resampled onto ``grid`` (low-pass filtered first when the grid is coarser)."""
    if nearest:
        return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    ratio = max(grid.GetSpacing()) / min(image.GetSpacing())
    if ratio > 1.5:
        image = sitk.SmoothingRecursiveGaussian(image, 0.4 * max(grid.GetSpacing()))
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _metric_method(mask: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=1)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _rotation_search(subject: sitk.Image, mask: sitk.Image, features: TemplateFeatures) -> sitk.Euler3DTransform:
    """The rigid start: brains' centres of mass aligned, the best of a grid of rotations (8 mm images).

    A head lies in the coil tilted by up to a few tens of degrees from the
    template's orientation, more than a gradient descent recovers from the
    identity; the grid spans +-30 degrees of pitch and +-20 of roll and yaw
    in steps of 10.
    """
    initial = sitk.CenteredTransformInitializer(
        sitk.Mask(subject, mask), features.t1, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = _metric_method(mask)
    method.SetOptimizerAsExhaustive(numberOfSteps=list(ROTATION_SEARCH_STEPS) + [0, 0, 0],
                                    stepLength=np.radians(ROTATION_SEARCH_STEP_DEG))
    method.SetOptimizerScales([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    method.SetShrinkFactorsPerLevel([4])
    method.SetSmoothingSigmasPerLevel([4.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    method.Execute(subject, features.t1)
    return initial


def _affine(subject: sitk.Image, mask: sitk.Image, features: TemplateFeatures,
            iterations: int) -> tuple[sitk.Transform, float]:
    """Affine subject -> template by Mattes mutual information, from the rotation search's rigid start."""
    rigid = _rotation_search(subject, mask, features)
    initial = sitk.AffineTransform(3)
    initial.SetCenter(rigid.GetCenter())
    initial.SetMatrix(rigid.GetMatrix())
    initial.SetTranslation(rigid.GetTranslation())
    method = _metric_method(mask)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(subject, features.t1)
    return transform, float(method.GetMetricValue())


def _regressors_on(features: TemplateFeatures, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """The template's regressors seen at the grid's points through ``transform``, shape (k, *grid array shape)."""
    resampled = sitk.Resample(features.stack, grid, transform, sitk.sitkLinear, 0.0)
    return np.moveaxis(sitk.GetArrayFromImage(resampled), -1, 0)


def _fit(regressors: np.ndarray, channels: Sequence[np.ndarray], inside: np.ndarray) -> list[np.ndarray]:
    """Least-squares weights of the regressors for each channel, fitted inside the mask."""
    design = regressors[:, inside].T
    return [np.linalg.lstsq(design, channel[inside], rcond=None)[0] for channel in channels]


def _synthetic(regressors: np.ndarray, weights: Sequence[np.ndarray], channel_scale: Sequence[float],
               inside: np.ndarray) -> np.ndarray:
    combined = sum(np.tensordot(w, regressors, axes=1) * s for w, s in zip(weights, channel_scale))
    return np.where(inside, combined, 0.0).astype(np.float32)


@contextlib.contextmanager
def _sitk_threads(threads: Optional[int]) -> Iterator[None]:
    """SimpleITK's default number of threads set to ``threads`` inside the block (None or 0: unchanged)."""
    if not threads:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register_to_template(
    magnitude: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    *,
    chi_ppm: Optional[np.ndarray] = None,
    chi_weight: float = 1.0,
    affine_iterations: int = 60,
    demons_iterations: Sequence[int] = DEMONS_ITERATIONS,
    threads: Optional[int] = None,
    progress: ProgressCallback = None,
    cancel: CancelToken = None,
) -> Registration:
    """Register a GRE acquisition to the MNI152 2009 template (affine, then demons).

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2) or (n0, n1, n2)
        Magnitude (echoes are combined by their root mean square).
    affine : numpy.ndarray, shape (4, 4)
        Array index -> RAS mm of the acquisition (any orientation, oblique).
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Brain mask.
    chi_ppm : numpy.ndarray, shape (n0, n1, n2), optional
        Susceptibility map, used as a second channel of the nonlinear step.
    chi_weight : float
        Weight of the susceptibility channel relative to the magnitude's
        (each normalised by its SD inside the mask).
    affine_iterations : int
        Optimiser iterations per level of the affine step.
    demons_iterations : sequence of int
        Demons iterations on the 4 mm and the 2 mm grid.
    threads : int, optional
        Threads SimpleITK uses for the registration (None or 0: its default,
        every core, or ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``).
    progress, cancel
        Progress callback and cancel token (checked between steps).

    Returns
    -------
    Registration

    Raises
    ------
    QSMInputError
        When the mask is empty or the shapes differ; when ``qsmlib[atlas]``
        is not installed.

    Examples
    --------
    The template's own T1 at 4 mm, placed 5 mm further right in world space, registers back:
    the subject point that shows the template's centre maps onto that centre.

    >>> import SimpleITK as sitk
    >>> from QSMLib.io.nifti import affine_from_image
    >>> from QSMLib.rois.template import load_template
    >>> image = sitk.BinShrink(load_template().t1, [4, 4, 4])
    >>> volume, affine = sitk.GetArrayFromImage(image), affine_from_image(image)
    >>> affine[0, 3] += 5.0  # RAS: 5 mm to the right
    >>> registration = register_to_template(volume, affine, volume > 0.05, demons_iterations=(10, 5))
    >>> centre = np.array(image.TransformContinuousIndexToPhysicalPoint([24.0, 29.0, 23.0]))  # LPS mm
    >>> subject_point = centre - np.array([5.0, 0.0, 0.0])  # right is -x in LPS
    >>> error = np.array(registration.transform.TransformPoint(tuple(subject_point))) - centre
    >>> bool(np.linalg.norm(error) < 1.5)
    True
    """
    with _sitk_threads(threads):
        return _register(magnitude, affine, mask, chi_ppm, chi_weight, affine_iterations, demons_iterations,
                         progress, cancel)


def _register(magnitude: np.ndarray, affine: np.ndarray, mask: np.ndarray, chi_ppm: Optional[np.ndarray],
              chi_weight: float, affine_iterations: int, demons_iterations: Sequence[int],
              progress: ProgressCallback, cancel: CancelToken) -> Registration:
    began = time.perf_counter()
    combined = combined_magnitude(magnitude)
    mask = np.asarray(mask, bool)
    if mask.shape != combined.shape:
        raise QSMInputError(f"The mask has shape {mask.shape}, the magnitude {combined.shape}: they must match.")
    if mask.sum() < 1000:
        raise QSMInputError("The brain mask has fewer than 1000 voxels: atlas registration needs the whole brain.")
    if chi_ppm is not None and np.shape(chi_ppm) != combined.shape:
        raise QSMInputError(f"chi has shape {np.shape(chi_ppm)}, the magnitude {combined.shape}: they must match.")
    features = template_features(2)
    # everything below works on 2 mm and 4 mm grids over the brain: resample once, low-pass filtered
    mask_full = image_from_array(mask.astype(np.uint8), affine)
    grid = _level_grid(mask_full, DEMONS_LEVELS_MM[-1])
    inside = sitk.GetArrayFromImage(_on_grid(sitk.Cast(mask_full, sitk.sitkFloat32), grid)) > 0.5
    magnitude_2mm = sitk.GetArrayFromImage(_on_grid(image_from_array(combined, affine), grid))
    corrected = _bias_corrected(magnitude_2mm, inside, grid.GetSpacing()[::-1])
    corrected /= np.float32(np.median(corrected[inside & (corrected > 0)]))
    channels_2mm = [corrected]
    if chi_ppm is not None:
        chi = np.where(mask, np.asarray(chi_ppm, np.float32), 0.0).astype(np.float32)
        channels_2mm.append(np.where(inside, sitk.GetArrayFromImage(_on_grid(image_from_array(chi, affine), grid)),
                                     0.0).astype(np.float32))
    scales = [1.0 / max(float(np.std(c[inside])), 1e-12) for c in channels_2mm]
    scales[1:] = [s * chi_weight for s in scales[1:]]
    channel_images = []
    for values in channels_2mm:
        image = sitk.GetImageFromArray(values)
        image.CopyInformation(grid)
        channel_images.append(image)
    subject_mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    subject_mask.CopyInformation(grid)
    seconds: dict[str, float] = {"prepare": time.perf_counter() - began}
    check_cancel(cancel)
    report(progress, 0.05, "atlas: affine registration")

    step = time.perf_counter()
    linear, affine_metric = _affine(channel_images[0], subject_mask, features, affine_iterations)
    seconds["affine"] = time.perf_counter() - step
    check_cancel(cancel)

    step = time.perf_counter()
    displacement: Optional[sitk.Image] = None
    weights: list[np.ndarray] = []
    region = subject_mask
    for level, (spacing, iterations) in enumerate(zip(DEMONS_LEVELS_MM, demons_iterations)):
        report(progress, 0.3 + 0.6 * level / len(DEMONS_LEVELS_MM), f"atlas: demons on a {spacing:g} mm grid")
        grid = _level_grid(region, spacing)
        current = linear if displacement is None else sitk.CompositeTransform(
            [linear, sitk.DisplacementFieldTransform(sitk.Image(displacement))])
        through_current = _regressors_on(features, grid, current)
        through_linear = through_current if displacement is None else _regressors_on(features, grid, linear)
        # the subject's mask, trimmed to the template's brain where it maps: a mask that takes in skull or
        # scalp (common on coarse grids) would otherwise pull the fit and the demons away from the brain
        template_brain = sitk.GetArrayFromImage(
            sitk.Resample(features.brain, grid, current, sitk.sitkNearestNeighbor, 0)) > 0
        inside = (sitk.GetArrayFromImage(_on_grid(sitk.Cast(subject_mask, sitk.sitkFloat32), grid)) > 0.5) & (
            ndi.binary_dilation(template_brain, iterations=BRAIN_MARGIN_VOXELS))
        channels = [sitk.GetArrayFromImage(_on_grid(image, grid)) for image in channel_images]
        weights = _fit(through_current, channels, inside)
        moving_array = _synthetic(through_linear, weights, scales, inside)
        fixed_array = np.where(inside, sum(c * s for c, s in zip(channels, scales)), 0.0).astype(np.float32)
        fixed = sitk.GetImageFromArray(fixed_array)
        fixed.CopyInformation(grid)
        moving = sitk.GetImageFromArray(moving_array)
        moving.CopyInformation(grid)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetStandardDeviations(DEMONS_SMOOTHING_VOXELS)
        demons.SetSmoothDisplacementField(True)
        if displacement is None:
            displacement = demons.Execute(fixed, moving)
        else:
            initial = sitk.Resample(displacement, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    displacement.GetPixelID())
            displacement = demons.Execute(fixed, moving, initial)
        # finer levels only refine around the deep grey matter, where the ROIs are
        structures = through_current[len(features.names) - len(AAL3_STRUCTURES):].sum(axis=0) > 0.05
        region = sitk.GetImageFromArray(structures.astype(np.uint8))
        region.CopyInformation(grid)
        region = _level_grid(region, spacing, DEEP_GREY_MARGIN_MM)
        region = sitk.Cast(sitk.Resample(sitk.Cast(subject_mask, sitk.sitkFloat32), region, sitk.Transform(),
                                         sitk.sitkNearestNeighbor, 0.0) > 0.5, sitk.sitkUInt8)
        check_cancel(cancel)
    seconds["demons"] = time.perf_counter() - step
    transform = sitk.CompositeTransform([linear, sitk.DisplacementFieldTransform(sitk.Image(displacement))])
    # how well the subject matches its synthetic template through the final mapping
    final = _synthetic(_regressors_on(features, grid, transform), weights, scales, inside)
    similarity = float(np.corrcoef(final[inside], fixed_array[inside])[0, 1])
    seconds["total"] = time.perf_counter() - began
    report(progress, 0.95, "atlas: registered")
    parameters = {
        "channels": ["magnitude"] + (["chi"] if chi_ppm is not None else []), "chi_weight": chi_weight,
        "affine_iterations": affine_iterations, "demons_levels_mm": list(DEMONS_LEVELS_MM),
        "demons_iterations": [int(v) for v in demons_iterations],
        "synthetic_template_weights": {
            channel: dict(zip(features.names, np.round(w.astype(np.float64), 4).tolist()))
            for channel, w in zip(("magnitude", "chi"), weights)},
    }
    return Registration(transform, affine_metric, similarity, seconds, parameters)
