"""Fixtures shared by the test modules, and the thread count of a pytest-xdist worker."""

import os

import pytest
from case_cache import load_case_once, shared_temporary_folder

from QSMLib._threads import available_cores, set_threads


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may run on (its CPU affinity), where xdist would count the
    machine's cores, which a container or ``taskset`` may not give it."""
    return available_cores()


def pytest_configure(config):
    """On an xdist worker, give QSMLib's FFTs and slab loops this worker's share of the cores: every worker
    running as many threads as there are cores would oversubscribe them (workers x cores threads)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        set_threads(max(1, available_cores() // int(workers)))


@pytest.fixture(scope="session")
def suite_case(tmp_path_factory):
    """``suite_case(name)``: a suite case simulated once per session and read back by every later test that
    loads it (:func:`QSMLib.phantom.suite.load_case`)."""
    folder = shared_temporary_folder(tmp_path_factory) / "suite_cache"
    return lambda name: load_case_once(name, folder)


#: Modules whose tests run longest and share one slow head between them (``small_qsmforward_kspace``, solved on its
#: zero-filled grid): collected last by name, they left one worker running them while the other sat idle.
RUN_FIRST = ("test_zero_fill.py",)


def pytest_collection_modifyitems(session, config, items):
    """Run :data:`RUN_FIRST`'s tests first, so that the workers' other tests fill the time they take."""
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)
