"""Shared fixtures: small real data written as feature files, quick run configurations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.reliability_table import (  # noqa: F401 - pytest hooks: pytest -m badinput --reliability-table FILE
    pytest_addoption,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

os.environ.setdefault("MPLBACKEND", "Agg")
# the suite builds prompt models with more classes than their text chunk, which would switch this whole
# process to a fixed mmap threshold (mlrkit.engine.host_memory, "auto") and slow every later image test;
# tests of that policy set the variable themselves (monkeypatch, subprocesses)
os.environ.setdefault("MLRKIT_MMAP_THRESHOLD", "off")


def _xdist_threads() -> None:
    """Under pytest-xdist (``-n N``) each worker gets its share of the usable CPUs as torch threads, and
    its subprocesses inherit it (``OMP_NUM_THREADS``): N workers x torch's default threads would
    oversubscribe the machine, the 2.8x slowdown of issue 20. Set before torch is imported."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 1:
        return
    from mlrkit.engine.threads import usable_cpus

    share = max(1, usable_cpus() // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(share)
    # the FeatureStore fills its files in place: two workers must never extract the same entry at once
    if "MLRKIT_CACHE" not in os.environ:
        import atexit
        import shutil
        import tempfile

        cache = tempfile.mkdtemp(prefix=f"mlrkit-cache-{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}-")
        os.environ["MLRKIT_CACHE"] = cache
        atexit.register(shutil.rmtree, cache, ignore_errors=True)


_xdist_threads()


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(config, items):
    """Scheduling for ``pytest -n N --dist loadgroup`` (harmless without xdist): the other tests of a file
    stay together on one worker (their module-scoped fixtures are built once); the slow end-to-end tests
    are scheduled individually (or in their own ``xdist_group``) and first: the longest jobs first keeps
    the workers' finishing times close."""
    for it in items:
        if not it.get_closest_marker("slow") and it.get_closest_marker("xdist_group") is None:
            it.add_marker(pytest.mark.xdist_group(it.nodeid.split("::")[0]))
    yield  # the other hooks (pytest's fixture-scope ordering, xdist's group suffixes) run here
    items[:] = [it for it in items if it.get_closest_marker("slow")] + \
        [it for it in items if not it.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def yeast_npz(tmp_path_factory) -> Path:
    """The built-in real yeast data written as a ``features:`` file."""
    from mlrkit.data.datasets.builtin import builtin_path

    path = tmp_path_factory.mktemp("data") / "yeast_features.npz"
    with np.load(builtin_path("yeast.npz")) as z:
        np.savez(path, **{k: z[k] for k in z.files})
    return path


@pytest.fixture(scope="module")
def single_thread():
    """One torch intra-op thread for a module of tiny-model tests (OpenMP start-up costs more than
    their matmuls, and the 2-core machine is shared)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mlrkit ARGS`` in a subprocess (the real entry point)."""
    return subprocess.run([sys.executable, "-m", "mlrkit", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
