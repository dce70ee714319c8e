"""Shared fixtures: small real data written as feature files, quick run configurations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# the suite builds prompt models with more classes than their text chunk, which would switch this whole
# process to a fixed mmap threshold (mlrkit.engine.host_memory, "auto") and slow every later image test;
# tests of that policy set the variable themselves (monkeypatch, subprocesses)
os.environ.setdefault("MLRKIT_MMAP_THRESHOLD", "off")


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
