"""Another subject's anatomy: the realistic head under a smooth random deformation.

The realistic head (:mod:`.realistic`) is built from the MNI152 2009 template
and the AAL3 labels, so registering it back to MNI space is unrealistically
easy: the template and the atlas fit it perfectly. A warped head has its own
size, orientation and brain shape (a global scaling, rotation and shift, and a
smooth nonlinear displacement of several mm), so an atlas must genuinely be
registered to it, as to a real subject.

The deformation maps a subject-frame point ``p`` (mm) to the model (MNI) point
it shows: ``q = c + R^T (p - c - t) / s``, then ``q + u(q)`` with ``u`` a
smooth random displacement (Gaussian-filtered white noise on a 4 mm lattice
over the model, scaled to the requested RMS inside the brain box), with
``c`` the MNI point at which the scaling and rotation are centred. The map is
one-to-one as long as the displacement's gradient stays below 1
(:meth:`AnatomyWarp.min_jacobian` checks it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.ndimage as ndi

from ..errors import QSMInputError
from .realistic import (
    _MODEL_SHAPE,
    _ORIGIN_MNI,
    RealisticModel,
    _Ellipsoid,
    _Tube,
    realistic_model,
    rotation_about_axes,
)

_LATTICE_MM = 4.0
#: MNI box (mm) over which the displacement is scaled to its RMS: the brain.
_BRAIN_BOX_MNI = (np.array([-70.0, -105.0, -50.0]), np.array([70.0, 70.0, 80.0]))


@dataclass(frozen=True)
class AnatomyWarp:
    """A smooth random deformation of the realistic head (another subject).

    Attributes
    ----------
    seed : int
        Seed of the random displacement.
    displacement_mm : float
        RMS of the nonlinear displacement inside the brain (mm).
    correlation_mm : float
        Smoothness of the displacement: SD (mm) of the Gaussian that filters
        white noise.
    scale : sequence of 3 float
        Size of the subject's head relative to MNI along x, y, z.
    rotation_deg : sequence of 2 float
        (pitch, roll) of the subject's head relative to MNI, degrees
        (:func:`.realistic.rotation_about_axes`).
    shift_mm : sequence of 3 float
        Position of the subject's head relative to MNI, mm.
    centre_mni : sequence of 3 float
        MNI point about which the scaling and rotation act.
    """

    seed: int
    displacement_mm: float = 3.0
    correlation_mm: float = 20.0
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation_deg: tuple[float, float] = (0.0, 0.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    centre_mni: tuple[float, float, float] = (0.0, -18.0, 6.0)

    @classmethod
    def from_dict(cls, parameters: Mapping[str, Any]) -> AnatomyWarp:
        """From plain data (a suite case's parameters)."""
        values = dict(parameters)
        for key in ("scale", "rotation_deg", "shift_mm", "centre_mni"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def _linear(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rotation = rotation_about_axes(*self.rotation_deg)
        scale = np.asarray(self.scale, np.float64)
        if scale.shape != (3,) or np.any(scale <= 0):
            raise QSMInputError(f"AnatomyWarp.scale must be 3 positive factors, got {self.scale}.")
        return rotation, scale, np.asarray(self.shift_mm, np.float64), np.asarray(self.centre_mni, np.float64)

    def displacement_lattice(self) -> np.ndarray:
        """The displacement (mm) on the 4 mm lattice over the model, shape (3, m0, m1, m2)."""
        return _displacement_lattice(self.seed, float(self.displacement_mm), float(self.correlation_mm))

    def to_model(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
        """Model (MNI) points shown at subject-frame points (mm); float32 arrays of the broadcast shape."""
        rotation, scale, shift, centre = self._linear()
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        offsets = [np.broadcast_to(np.asarray(c, np.float32), shape) - np.float32(centre[i] + shift[i])
                   for i, c in enumerate((x, y, z))]
        # q = c + R^T (p - c - t) / s, component by component to keep float32 and memory small
        linear = [np.float32(centre[j]) + sum(np.float32(rotation[i, j] / scale[j]) * offsets[i] for i in range(3))
                  for j in range(3)]
        lattice = self.displacement_lattice()
        index = [(q - np.float32(o)) / np.float32(_LATTICE_MM) for q, o in zip(linear, _ORIGIN_MNI)]
        flat = [i.reshape(-1) for i in index]
        return [(q.reshape(-1) + ndi.map_coordinates(lattice[axis], flat, order=1, mode="nearest")).reshape(shape)
                for axis, q in enumerate(linear)]

    def to_subject(self, points_mni: np.ndarray) -> np.ndarray:
        """Subject-frame points (mm) that show the given model points, shape (n, 3) (inverse of :meth:`to_model`).

        The nonlinear part is inverted by fixed-point iteration (it converges
        because the displacement's gradient is below 1).
        """
        rotation, scale, shift, centre = self._linear()
        target = np.asarray(points_mni, np.float64).reshape(-1, 3)
        lattice = self.displacement_lattice()
        linear = target.copy()
        for _ in range(30):
            index = ((linear - _ORIGIN_MNI) / _LATTICE_MM).T
            displacement = np.stack([ndi.map_coordinates(lattice[a].astype(np.float64), index, order=1,
                                                         mode="nearest") for a in range(3)], axis=1)
            linear = target - displacement
        # p = c + t + R (s (q - c))
        return centre + shift + ((linear - centre) * scale) @ rotation.T

    def min_jacobian(self) -> float:
        """Smallest Jacobian determinant of the nonlinear part over the model (> 0: one-to-one)."""
        lattice = self.displacement_lattice()
        gradient = np.stack([np.stack(np.gradient(lattice[i], _LATTICE_MM)) for i in range(3)])
        jacobian = gradient.transpose(2, 3, 4, 0, 1) + np.eye(3)
        return float(np.linalg.det(jacobian).min())


@functools.lru_cache(maxsize=4)
def _displacement_lattice(seed: int, rms_mm: float, correlation_mm: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(int(np.ceil(n / _LATTICE_MM)) + 1 for n in _MODEL_SHAPE)
    low, high = _BRAIN_BOX_MNI
    box = tuple(slice(int((lo - o) / _LATTICE_MM), int((hi - o) / _LATTICE_MM) + 1)
                for lo, hi, o in zip(low, high, _ORIGIN_MNI))
    components = []
    for _ in range(3):
        noise = rng.standard_normal(shape)
        smooth = ndi.gaussian_filter(noise, correlation_mm / _LATTICE_MM, mode="reflect")
        components.append(smooth)
    field = np.stack(components)
    rms = float(np.sqrt((field[(slice(None), *box)] ** 2).sum(axis=0).mean()))
    return (field * (rms_mm / max(rms, 1e-12))).astype(np.float32)


@functools.lru_cache(maxsize=2)
def warped_model(warp: AnatomyWarp) -> RealisticModel:
    """The realistic head model of another subject: :func:`.realistic.realistic_model` deformed by ``warp``.

    Every property field is resampled once onto the model grid in the
    subject frame (so sampling stays as fast as for the template's head); the
    analytic shapes (veins, lesions, cavities, bones) move with the
    deformation: end points and centres mapped, sizes scaled by the mean
    scale factor.

    Returns
    -------
    RealisticModel
        With the model grid's origin and shape, in subject-frame mm.
    """
    model = realistic_model()
    if warp.min_jacobian() <= 0.2:
        raise QSMInputError(f"The deformation {warp} folds space (Jacobian {warp.min_jacobian():.2f}): "
                            "make it smoother or smaller.")
    axes = [o + np.arange(n, dtype=np.float32) for o, n in zip(_ORIGIN_MNI, _MODEL_SHAPE)]
    fields = {name: np.empty(_MODEL_SHAPE, volume.dtype) for name, volume in model.fields.items()}
    for plane in range(0, _MODEL_SHAPE[0], 8):
        points = warp.to_model(axes[0][plane:plane + 8][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
        index = np.stack([(q - np.float32(o)).reshape(-1) for q, o in zip(points, _ORIGIN_MNI)])
        for name, volume in model.fields.items():
            order = 0 if volume.dtype.kind in "iu" else 1
            fields[name][plane:plane + 8] = ndi.map_coordinates(
                volume, index, order=order, mode="nearest").reshape(points[0].shape)
    size = float(np.mean(warp.scale))

    def moved_tube(tube: _Tube) -> _Tube:
        start, end = warp.to_subject(np.array([tube.start, tube.end]))
        return _Tube(tuple(map(float, start)), tuple(map(float, end)), tube.radius * size, tube.value)

    def moved_ellipsoid(shape: _Ellipsoid) -> _Ellipsoid:
        centre = warp.to_subject(np.array([shape.centre]))[0]
        return _Ellipsoid(tuple(map(float, centre)), tuple(a * size for a in shape.semi_axes), shape.value)

    return RealisticModel(
        fields, [moved_tube(t) for t in model.veins], [moved_ellipsoid(e) for e in model.lesions],
        [moved_ellipsoid(e) for e in model.cavities], [moved_tube(t) for t in model.cavity_tubes],
        [moved_ellipsoid(e) for e in model.bones], [moved_tube(t) for t in model.bone_tubes],
    )


def receive_bias_field(axes_mm: Sequence[np.ndarray], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative receive-coil sensitivity, 1 +- ``amplitude`` over the field of view.

    A random quadratic in the grid coordinates (scaled to the FOV) plus a
    broad Gaussian bump towards one side, as a multi-channel head coil's
    combined sensitivity: brighter near the coil elements (the periphery), a
    smooth variation over the head.

    Returns
    -------
    numpy.ndarray of float32, shape (n0, n1, n2)
    """
    coordinates = [np.asarray(a, np.float64) / max(float(np.ptp(a)) / 2.0, 1.0) for a in axes_mm]
    grids = np.meshgrid(*coordinates, indexing="ij", sparse=True)
    linear = rng.uniform(-1.0, 1.0, size=3)
    quadratic = rng.uniform(0.0, 1.0, size=3)
    field = sum(linear[i] * grids[i] + quadratic[i] * grids[i] ** 2 for i in range(3))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    field = field + np.exp(-sum((grids[i] - 0.8 * direction[i]) ** 2 for i in range(3)) / 0.5)
    field = np.broadcast_to(field, tuple(len(a) for a in axes_mm))
    centred = field - field.mean()
    return (1.0 + amplitude * centred / max(float(np.abs(centred).max()), 1e-12)).astype(np.float32)
