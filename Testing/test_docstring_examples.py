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


#: Registered methods that implement no published algorithm (so cite no paper).
UNPUBLISHED = {("phase_offset", "none"), ("bipolar", "none"), ("relaxometry", "none")}


def test_every_registered_method_documents_an_example_and_its_papers():
    from QSMLib.pipeline import REGISTRY

    for stage, methods in REGISTRY.items():
        for name, entry in methods.items():
            if (stage, name) in UNPUBLISHED:
                continue
            doc = entry.function.__doc__ or ""
            assert "\n    Examples\n    --------\n" in doc, f"{stage} method {name!r} has no Examples section"
            assert "\n    References\n    ----------\n" in doc, f"{stage} method {name!r} has no References section"


def test_the_public_api_documents_examples():
    for name in QSMLib.__all__:
        value = getattr(QSMLib, name)
        is_error = isinstance(value, type) and issubclass(value, Exception)
        if callable(value) and not is_error:
            assert ">>> " in (value.__doc__ or ""), f"QSMLib.{name} has no example"
