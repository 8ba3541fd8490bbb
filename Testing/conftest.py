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
