"""Every Examples section in QSMLib's docstrings runs and prints what it shows (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import QSMLib

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(QSMLib.__path__, prefix="QSMLib.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_examples_cover_the_public_api():
    """The main entry points document their use with an example."""
    from QSMLib import dipole, pipeline

    for function in (pipeline.run_pipeline, dipole.dipole_kernel, dipole.forward_field):
        assert ">>> " in (function.__doc__ or ""), function.__qualname__
