"""Which of the module's Python requirements are missing (no Qt, no installation).

Used on Slicer versions without ``pip_ensure``: the widget asks the user
before installing what this reports.
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
