"""Numerical head phantom and its forward simulation to multi-echo GRE (demo, tests, accuracy suite).

Not part of QSMLib's public API (``import QSMLib`` does not load it); the
demo, the Slicer sample data, the tests and the benchmarks import it from here.

The head is built from analytic shapes (ellipsoids and tubes) defined in mm,
so it looks the same at any voxel size. Its susceptibility is referenced to
the air outside the head (air = 0, so the zero padding of the FFT is
physical): soft tissue and CSF at -9.4 ppm, bone at -11.4 ppm, an air cavity
(sinus) at 0 and brain structures at -9.4 ppm plus their value relative to
CSF/water (Schenck, Med Phys 1996, "The role of magnetic susceptibility in
magnetic resonance imaging").

The field is simulated on a grid ``supersample`` times finer than the output
grid and averaged down, so the data are not made with the kernel that a
reconstruction uses on the output grid (no "inverse crime"). The field of the
periodic copies that FFT convolution adds is removed (:func:`isolation_correction`),
so it is the field of one head in air, and a second-order shim over the brain
is applied. The signal is ``M0 exp(-R2* TE)`` per tissue with partial volumes
and intravoxel dephasing, the phase ``phi0 + 2 pi f TE`` (plus a bipolar
error on even echoes), and complex Gaussian noise.

Array axes of every volume: axis 0 = left -> right, axis 1 = posterior ->
anterior, axis 2 = inferior -> superior (RAS index order in the axial case).

Labels (``LABEL_NAMES``; values relative to CSF/water in ppm, ``TISSUES``)::

    1 caudate           +0.06     12 calcification     -0.20
    2 putamen           +0.05     ---- outside the brain mask ----
    3 globus_pallidus   +0.19     20 extracerebral_csf  0.00
    4 thalamus          +0.01     21 bone              -2.00  (-11.4 vs air)
    5 substantia_nigra  +0.16     22 soft_tissue        0.00  (-9.4 vs air)
    6 red_nucleus       +0.12     23 air_cavity        +9.40  (0 vs air)
    7 dentate           +0.10
    8 csf (ventricles)   0.00
    9 white_matter      -0.03
   10 grey_matter       +0.02
   11 vein              +0.35

Brain values follow in vivo QSM at 3 T referenced to CSF: Deistung et al.,
NeuroImage 2013 (65:299); Lim et al., NeuroImage 2013 (82:449); Li et al.,
NeuroImage 2011 (55:1645); the QSM challenge 2.0 head phantom (Marques et al.,
MRM 2021). Veins: deoxygenated blood at about 60 % saturation (Haacke et al.,
AJNR 2009; Fan et al., MRM 2014). Calcification: Chen et al., Radiology 2014
(270:496). R2* at 3 T: Langkammer et al., Radiology 2010 (257:455) and Peran
et al., Brain 2007.
"""

from .anatomy import (
    BRAIN_LABELS,
    DEEP_GREY_MATTER,
    LABEL_NAMES,
    TISSUE_VS_AIR_PPM,
    TISSUES,
    Tissue,
    susceptibility_tables,
)
from .forward import isolation_correction, shim_field, solid_harmonics, supersampled_fields
from .head import HeadPhantom, acquisition_affine, deep_grey_matter_labels, simulate_head
from .rasterise import block_mean, grid_axes_mm, head_labels
from .signal import bipolar_error_map, dephasing_factor, gre_signal, phase_offset_map

__all__ = [
    "acquisition_affine",
    "bipolar_error_map",
    "block_mean",
    "BRAIN_LABELS",
    "DEEP_GREY_MATTER",
    "deep_grey_matter_labels",
    "dephasing_factor",
    "gre_signal",
    "grid_axes_mm",
    "head_labels",
    "HeadPhantom",
    "isolation_correction",
    "LABEL_NAMES",
    "phase_offset_map",
    "shim_field",
    "simulate_head",
    "solid_harmonics",
    "supersampled_fields",
    "susceptibility_tables",
    "Tissue",
    "TISSUE_VS_AIR_PPM",
    "TISSUES",
]
