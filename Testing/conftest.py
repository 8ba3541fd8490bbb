"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="session")
def suite_cache(tmp_path_factory):
    """One folder of generated suite cases for the whole session: each small case is simulated once and read
    back by every later test that loads it (:func:`QSMLib.phantom.suite.load_case`)."""
    return tmp_path_factory.getbasetemp() / "suite_cache"
