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


def seed_torch_for(seed: int, device) -> None:
    """``torch.manual_seed(seed)`` as far as a run on ``device`` can tell, without its cost on the CPU.

    ``torch.manual_seed`` also queues a seed for every CUDA device when CUDA is not initialised, and
    formats a Python stack trace to do so: about 1 ms per call on the 2-core machine, 30 calls per demo
    run. A run on the CPU in a process where CUDA is not initialised only draws from the CPU generator,
    which ``torch.default_generator.manual_seed`` sets to the same state; anything else goes through
    ``torch.manual_seed``.
    """
    import torch

    if getattr(device, "type", str(device)) == "cpu" and not torch.cuda.is_initialized():
        torch.default_generator.manual_seed(seed)
    else:
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


def plain_data(obj: Any, where: str = "payload") -> Any:
    """``obj`` as tensors and plain data only, what ``torch.load(weights_only=True)`` reads back.

    Tensors, ``None``, bool/int/float/str, and lists/tuples/dicts of them are kept; NumPy arrays
    become tensors, NumPy scalars Python numbers, paths strings and dataclasses dicts. Anything
    else raises a :class:`~mlrkit.errors.MlrkitError` naming where it sits (``where``), so that
    a file that could not be read back safely is never written.
    """
    import dataclasses

    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise _not_plain(where, obj)
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise _not_plain(f"{where} key {k!r}", k)
            out[k] = plain_data(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise _not_plain(where, obj)


def _not_plain(where: str, obj: Any) -> Exception:
    from mlrkit.errors import MlrkitError

    return MlrkitError(f"cannot save {where}: a {type(obj).__module__}.{type(obj).__qualname__} is not a tensor or "
                       "plain data (checkpoints are read back with weights_only=True)")


def save_torch_file(path: str | Path, payload: Any) -> None:
    """``torch.save`` of :func:`plain_data` (``payload``), written atomically."""
    import torch

    data = plain_data(payload)
    with atomic_write(path) as tmp:
        torch.save(data, tmp)


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, no pickled code is run.

    A missing file, a file that is not a PyTorch archive (truncated, corrupt) or one that holds
    other Python objects (which could execute code when unpickled) is a one-line
    :class:`~mlrkit.errors.MlrkitError` naming the file.
    """
    import pickle
    import re

    import torch

    from mlrkit.errors import MlrkitError

    path = Path(path)
    if not path.is_file():
        raise MlrkitError(f"{what} not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand (\S+)", str(e))
        obj = next((g for g in (found.groups() if found else ()) if g), "a Python object")
        raise MlrkitError(f"{what} {path} holds {obj} besides tensors and plain data; refused (it is read with "
                          "weights_only=True, so that no pickled code runs)") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or truncated file
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise MlrkitError(f"cannot read {what} {path}: not a complete PyTorch file ({reason})") from None
