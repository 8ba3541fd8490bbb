"""The module's Python requirements: which are missing, and installing them on first use (no Qt at import).

Nothing here runs when the module loads: the widget calls
:func:`ensureRequirements` when Apply is pressed.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def readRequirements(path: str) -> list[str]:
    """Requirement lines of a requirements.txt file (comments, blanks and pip options skipped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def missingRequirements(path: str) -> list[str]:
    """Requirements of ``path`` that are not installed at an acceptable version."""
    from packaging.requirements import Requirement

    missing = []
    for line in readRequirements(path):
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(line)
    return missing


def ensureRequirements(requirementsPath: str, requester: str) -> None:
    """Offer to install the requirements that are missing; call it on first use, never at module load.

    Slicer 5.11 and later have ``slicer.packaging.pip_ensure``, which asks,
    installs with progress, offers a restart and skips in testing mode; it
    must be imported explicitly (``slicer`` does not import it). Older
    versions (whose ``slicer.packaging``, if any, has no ``pip_ensure``) get an
    OK/Cancel question and ``slicer.util.pip_install``.

    Raises
    ------
    RuntimeError
        When the user declines the installation.
    """
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(packaging.load_requirements(requirementsPath), requester=requester)
        return
    missing = missingRequirements(requirementsPath)
    if not missing:
        return
    import slicer.util

    if not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages: {', '.join(missing)}. Install them now?", requester):
        raise RuntimeError(f"{requester} cannot run without the Python packages {', '.join(missing)}.")
    slicer.util.pip_install(missing)
