"""The phantom's anatomy: tissues (susceptibility, M0, R2*) and the analytic shapes that place them.

Shapes are defined in mm in the head frame: x (array axis 0) to the right, y (axis 1) anterior,
z (axis 2) superior, origin at the centre of the default 192 x 224 x 176 mm field of view.
Values and their sources are listed in :mod:`QSMLib.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np

#: Susceptibility of water-like soft tissue (and CSF) relative to air, ppm.
TISSUE_VS_AIR_PPM = -9.4

#: Deep grey matter structures, as named in :data:`LABEL_NAMES`.
DEEP_GREY_MATTER = (
    "caudate",
    "putamen",
    "globus_pallidus",
    "thalamus",
    "substantia_nigra",
    "red_nucleus",
    "dentate",
)


@dataclass(frozen=True)
class Tissue:
    """MR and magnetic properties of one phantom tissue.

    Attributes
    ----------
    name : str
        Label name.
    chi_ppm : float
        Susceptibility relative to CSF/water in ppm (air is +9.4).
    m0 : float
        Signal at TE = 0 (proton density, arbitrary units; CSF = 1).
    r2star_3t : float
        R2* at 3 T in 1/s; scaled linearly with B0 for other field strengths.
    in_brain : bool
        Whether the tissue lies inside the brain mask.
    """

    name: str
    chi_ppm: float
    m0: float
    r2star_3t: float
    in_brain: bool


#: Tissues by label value. Label 0 is the air around the head.
TISSUES: dict[int, Tissue] = {
    0: Tissue("air", -TISSUE_VS_AIR_PPM, 0.0, 0.0, False),
    1: Tissue("caudate", 0.06, 0.82, 20.0, True),
    2: Tissue("putamen", 0.05, 0.80, 25.0, True),
    3: Tissue("globus_pallidus", 0.19, 0.74, 40.0, True),
    4: Tissue("thalamus", 0.01, 0.78, 20.0, True),
    5: Tissue("substantia_nigra", 0.16, 0.72, 38.0, True),
    6: Tissue("red_nucleus", 0.12, 0.74, 32.0, True),
    7: Tissue("dentate", 0.10, 0.74, 30.0, True),
    8: Tissue("csf", 0.0, 1.0, 4.0, True),
    9: Tissue("white_matter", -0.03, 0.70, 21.0, True),
    10: Tissue("grey_matter", 0.02, 0.86, 17.0, True),
    11: Tissue("vein", 0.35, 0.80, 45.0, True),
    12: Tissue("calcification", -0.20, 0.35, 120.0, True),
    20: Tissue("extracerebral_csf", 0.0, 1.0, 4.0, False),
    21: Tissue("bone", -2.0, 0.03, 500.0, False),
    22: Tissue("soft_tissue", 0.0, 0.75, 35.0, False),
    23: Tissue("air_cavity", -TISSUE_VS_AIR_PPM, 0.0, 0.0, False),
}

#: Label value -> name, for every label the phantom paints (0 = background air).
LABEL_NAMES: dict[int, str] = {index: tissue.name for index, tissue in TISSUES.items() if index}

#: Labels whose voxels form the brain mask.
BRAIN_LABELS = tuple(index for index, tissue in TISSUES.items() if tissue.in_brain)

_LUT_SIZE = max(TISSUES) + 1
_LABEL = {tissue.name: index for index, tissue in TISSUES.items()}


@dataclass(frozen=True)
class _Ellipsoid:
    label: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    # rotation about axis 2 then axis 0, degrees
    angles_deg: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class _Tube:
    """A capsule: all points within ``radius`` of the segment ``start``-``end``."""

    label: int
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class _FoldedEllipsoid:
    """An ellipsoid whose surface is folded like gyri, kept inside ``limit_semi_axes``.

    Inside where ``q <= 1 + amplitude * sin(x) sin(y) sin(z)`` (``q`` the
    normalised squared radius, the sines of the given periods and phases).
    """

    label: int
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    amplitude: float
    periods_mm: tuple[float, float, float]
    phases_rad: tuple[float, float, float]
    limit_semi_axes: tuple[float, float, float]


_Shape = Union[_Ellipsoid, _Tube, _FoldedEllipsoid]

# Head frame in mm: x (axis 0) to the right, y (axis 1) anterior, z (axis 2)
# superior, origin at the centre of the default 192 x 224 x 176 mm FOV.
_HEAD_CENTRE = (0.0, -4.0, -2.0)
_BRAIN_SEMI_AXES = (60.0, 82.0, 66.0)


def _bilateral(
    label: int,
    centre: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
) -> tuple[_Ellipsoid, _Ellipsoid]:
    x, y, z = centre
    return (
        _Ellipsoid(label, (x, y, z), semi_axes, (yaw_deg, pitch_deg)),
        _Ellipsoid(label, (-x, y, z), semi_axes, (-yaw_deg, pitch_deg)),
    )


def _cortical_vein(
    label: int, start_dir: tuple[float, float, float], end_dir: tuple[float, float, float], depth: float, radius: float
) -> _Tube:
    # Endpoints on a scaled copy of the pial ellipsoid so the vein runs in the cortex.
    def on_surface(direction: tuple[float, float, float]) -> tuple[float, float, float]:
        d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
        a = np.asarray(_BRAIN_SEMI_AXES)
        t = depth / math.sqrt(float(np.sum((d / a) ** 2)))
        x, y, z = (float(v) for v in np.asarray(_HEAD_CENTRE) + t * d)
        return x, y, z

    return _Tube(label, on_surface(start_dir), on_surface(end_dir), radius)


def _anatomy() -> tuple[_Shape, ...]:
    """The shapes in painting order: a later shape overwrites an earlier one."""
    c = _HEAD_CENTRE
    L = _LABEL
    shapes: list[_Shape] = [
        _Ellipsoid(L["soft_tissue"], c, (74.0, 96.0, 80.0)),
        # face: extends the head forward and down so the sinus sits in bone below the frontal lobe
        _Ellipsoid(L["soft_tissue"], (0.0, 50.0, -55.0), (46.0, 42.0, 29.0)),
        _Ellipsoid(L["bone"], c, (69.0, 91.0, 75.0)),
        _Ellipsoid(L["bone"], (0.0, 46.0, -58.0), (38.0, 34.0, 22.0)),
        _Ellipsoid(L["extracerebral_csf"], c, (63.0, 85.0, 69.0)),
        _Ellipsoid(L["grey_matter"], c, _BRAIN_SEMI_AXES),
        # folded grey/white boundary: cortex 1.5-11 mm thick, so the local field has cortical texture
        _FoldedEllipsoid(
            L["white_matter"],
            c,
            (51.0, 71.0, 56.0),
            0.3,
            (19.0, 23.0, 21.0),
            (0.3, 1.1, 2.0),
            (57.0, 78.0, 63.0),
        ),
        *_bilateral(L["caudate"], (16.0, 10.0, 12.0), (4.5, 11.0, 8.0)),
        *_bilateral(L["putamen"], (26.0, 2.0, 2.0), (5.0, 14.0, 9.0)),
        *_bilateral(L["globus_pallidus"], (19.5, -2.0, 0.0), (3.5, 8.0, 5.0)),
        *_bilateral(L["thalamus"], (10.5, -18.0, 4.0), (7.0, 13.0, 8.0)),
        *_bilateral(L["red_nucleus"], (5.0, -20.0, -8.0), (3.5, 4.0, 4.5)),
        # the substantia nigra runs anterolaterally and slightly downwards
        *_bilateral(L["substantia_nigra"], (10.0, -16.0, -14.0), (3.0, 9.0, 2.5), -25.0, -10.0),
        *_bilateral(L["dentate"], (14.0, -56.0, -34.0), (6.0, 8.0, 6.0), 20.0),
        *_bilateral(L["csf"], (8.0, -2.0, 14.0), (4.5, 26.0, 9.0), 0.0, 8.0),
        _Ellipsoid(L["csf"], (0.0, -12.0, 2.0), (1.5, 10.0, 8.0)),
        # veins at different angles to B0: straight sinus, internal cerebral veins, cortical veins
        _Tube(L["vein"], (0.0, -42.0, 20.0), (0.0, -70.0, -6.0), 2.5),
        _Tube(L["vein"], (2.5, 2.0, 11.0), (2.5, -32.0, 17.0), 1.3),
        _Tube(L["vein"], (-2.5, 2.0, 11.0), (-2.5, -32.0, 17.0), 1.3),
        _cortical_vein(L["vein"], (0.55, 0.35, 0.75), (0.65, -0.3, 0.7), 0.965, 1.5),
        _cortical_vein(L["vein"], (-0.9, 0.2, 0.25), (-0.85, -0.45, 0.3), 0.965, 1.3),
        _Ellipsoid(L["calcification"], (-24.0, 22.0, 24.0), (3.0, 3.0, 3.0)),
        # sphenoid/ethmoid-like sinus below the frontal lobe, walled by the facial bone
        _Ellipsoid(L["air_cavity"], (0.0, 40.0, -72.0), (16.0, 14.0, 8.0)),
    ]
    return tuple(shapes)


ANATOMY = _anatomy()


def _lookup(property_name: str) -> np.ndarray:
    table = np.zeros(_LUT_SIZE, np.float32)
    for index, tissue in TISSUES.items():
        table[index] = getattr(tissue, property_name)
    return table


def susceptibility_tables() -> tuple[np.ndarray, np.ndarray]:
    """Label -> susceptibility look-up tables, ppm.

    Returns
    -------
    absolute : numpy.ndarray of float32
        Susceptibility relative to air (air outside the head = 0): the
        source of the total field.
    brain_relative : numpy.ndarray of float32
        Inside the brain: susceptibility relative to CSF/water (the QSM
        truth, the source of the local field); 0 for every non-brain label.
    """
    relative = _lookup("chi_ppm")
    absolute = relative + np.float32(TISSUE_VS_AIR_PPM)
    absolute[0] = 0.0
    absolute[_LABEL["air_cavity"]] = 0.0
    in_brain = np.zeros(_LUT_SIZE, bool)
    in_brain[list(BRAIN_LABELS)] = True
    return absolute, np.where(in_brain, relative, np.float32(0.0)).astype(np.float32)
