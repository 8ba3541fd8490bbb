"""Suite cases generated once per test session, however many pytest-xdist workers ask for them."""

import os
from pathlib import Path

from filelock import FileLock

from QSMLib.phantom.suite import SuiteCase, load_case


def shared_temporary_folder(tmp_path_factory) -> Path:
    """The session's temporary folder, the same for every xdist worker (each worker's own is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def load_case_once(name: str, folder: Path) -> SuiteCase:
    """The suite case ``name`` from ``folder``: the first worker to ask generates and caches it while the
    others wait for it, then read it back."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{name}.lock")):
        return load_case(name, folder)
