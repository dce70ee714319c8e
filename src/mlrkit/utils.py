"""Small shared helpers: atomic writes, seeding, JSON lines."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path`` (atomic on POSIX).

    The file gets the permissions of a plainly created file (0666 minus the umask, usually readable by
    the group), not ``mkstemp``'s private 0600, so run directories can be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. run seed, epoch), stable across runs."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))


def save_array_with_meta(path: str | Path, name: str, array: np.ndarray, meta: dict) -> Path:
    """One compressed ``.npz`` holding ``array`` (under ``name``) and ``meta`` as JSON, written atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{name: array}, meta=np.array(json.dumps(meta, default=_json_default)))
    return path


def load_array_with_meta(path: str | Path, name: str, what: str) -> tuple[np.ndarray, dict]:
    """Read a file written by :func:`save_array_with_meta`; a missing or foreign file is a DataError."""
    from mlrkit.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[name], json.loads(str(z["meta"]))
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not an mlrkit {what} file ({e})") from None
