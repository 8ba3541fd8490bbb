"""Another subject for the atlas tests: the suite's small warped head, shared by the test modules."""

import json

import pytest
from case_cache import load_case_once, shared_temporary_folder

from QSMLib.io.nifti import write_volume

CASE = "warped_small_3mm"


@pytest.fixture(scope="session")
def warped_head(pytestconfig, tmp_path_factory):
    """The realistic head under a smooth random deformation, 3 mm, whole head.

    Kept in pytest's cache folder between runs when the cache plugin is on
    (``-p no:cacheprovider`` turns it off: then in a temporary folder).
    """
    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        folder = cache.mkdir("suite_cache")
    else:
        folder = shared_temporary_folder(tmp_path_factory) / "suite_cache"
    return load_case_once(CASE, folder)


def write_warped_acquisition(case, folder):
    """Per-echo magnitude and phase NIfTI files with BIDS sidecars; returns {"mag": [...], "phase": [...]}."""
    folder.mkdir(parents=True, exist_ok=True)
    acquisition = case.acquisition
    files = {"mag": [], "phase": []}
    for echo, echo_time in enumerate(acquisition.echo_times_s):
        for role, data in (("mag", acquisition.magnitude), ("phase", acquisition.phase)):
            path = write_volume(folder / f"{role}_echo-{echo + 1}.nii.gz", data[echo], acquisition.affine)
            (folder / f"{role}_echo-{echo + 1}.json").write_text(
                json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": acquisition.b0_tesla}))
            files[role].append(str(path))
    return files
