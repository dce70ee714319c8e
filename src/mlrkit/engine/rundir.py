"""A run directory: named by ``--out`` alone, owned by one writer, resumed only where asked.

* :class:`RunLock` is an exclusive ``flock`` on ``RUN/.lock`` held for the whole run. The file
  records the holder (pid, host, start time, command); a second writer gets a clear error naming
  it. The kernel drops the lock when its process dies, so a lock file that still names a holder
  but can be locked again was left by a killed process: that stale lock is reported and taken over.
* :func:`saved_config` reads ``RUN/config.yaml`` and refuses a missing, corrupt or incomplete one; a
  run saved by an older mlrkit (an older ``config_version``) is upgraded (:mod:`mlrkit.config_versions`).
* :func:`config_diff` lists the keys where two configurations differ (for resume and sweep errors).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mlrkit.errors import ConfigError, MlrkitError

log = logging.getLogger("mlrkit")

LOCK_NAME = ".lock"
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "results.json", "metrics.jsonl", "run.json")


class RunLock:
    """Exclusive ownership of a run directory (``RUN/.lock``, POSIX ``flock``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.stale: str | None = None  # a report of the dead holder whose lock was taken over

    def acquire(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise MlrkitError(f"{self.run_dir} is in use by another mlrkit process ({holder}); wait for it to end "
                              "or choose another --out") from None
        previous = _read_holder(fd)
        if previous:
            self.stale = (f"{self.path} was left by {_describe(previous)}, which is no longer running "
                          "(killed?); taking the run directory over")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock; the file stays (never unlinked while held)."""
        import fcntl

        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def append_metrics_row(path: Path, row: dict[str, Any], sync: bool = True) -> None:
    """Append one JSON row to ``metrics.jsonl``; ``sync``: fsync'd, as it must be before a ``last.pt`` that
    follows it (a row ahead of ``last.pt`` is dropped and recomputed on resume; the other order loses it)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def truncate_metrics(path: Path, key: str, done: int) -> None:
    """Keep the ``metrics.jsonl`` rows with an int ``row[key] <= done``: rows past ``last.pt``, and a row cut
    short by a kill, are dropped (the resume recomputes them)."""
    from mlrkit.utils import atomic_write

    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a row cut short by a kill
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int) and row[key] <= done:
            keep.append(line)
    with atomic_write(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in keep))


def _read_holder(fd: int) -> dict[str, Any] | None:
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:80]}
    return d if isinstance(d, dict) else {"unreadable": raw[:80]}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    if "unreadable" in holder:
        return f"lock file content {holder['unreadable']!r}"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command', '')}".rstrip(": "))


def describe_contents(run_dir: Path) -> str:
    """What a directory holds, for error messages: ``config.yaml, metrics.jsonl`` or ``nothing``."""
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "nothing"


def check_out_path(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise MlrkitError(f"--out {run_dir} is an existing file, not a run directory")


def saved_config(run_dir: Path, resuming: bool = True):
    """``RUN/config.yaml`` as a RunConfig; refused when missing, unreadable or missing keys.

    ``resuming``: the messages tell how to start afresh (``--resume``); else they name the file only.
    """
    from mlrkit.config import RunConfig, yaml_load

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MlrkitError(f"--resume: {run_dir} has no saved configuration (config.yaml); it holds "
                          f"{describe_contents(run_dir)}. To start afresh, run without --resume "
                          f"(after removing {run_dir} if it holds anything)")
    from mlrkit.config_versions import CONFIG_VERSION, config_version, drop_removed, upgrade_message

    try:
        raw = yaml_load(path.read_text())
        if not isinstance(raw, dict):
            raise ConfigError("not a mapping")
        version = config_version(raw, str(path))
        raw, dropped = drop_removed(raw, version)  # an older version: the keys removed on purpose since
        cfg = RunConfig.from_dict(raw)
    except Exception as e:  # noqa: BLE001 - YAML and config errors alike: the file is not a saved config
        problem = f"{path} is not a readable saved configuration ({e})"
    else:
        missing = sorted(set(_flat(cfg.to_dict())) - set(_flat(raw)))
        problem = ""
        if version < CONFIG_VERSION:  # filled from the defaults: the older code had no such setting
            if dropped or missing:
                log.warning("mlrkit: warning: %s", upgrade_message(str(path), version, dropped, missing))
        elif missing:
            problem = f"{path} is incomplete (missing {', '.join(missing[:6])})"
    if problem and resuming:
        raise MlrkitError(f"--resume: {problem}; restore it, or start afresh without --resume in another --out")
    if problem:
        raise MlrkitError(f"{problem}; the run cannot be rebuilt from it")
    return cfg


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ("out",)) -> list[str]:
    """Keys where two configuration dicts differ, as ``key: A -> B`` (``ignore``: dotted keys left out).

    Keys removed on purpose from the schema (:data:`mlrkit.config_versions.REMOVED`, e.g. in a checkpoint
    written by an older mlrkit) are not differences: nothing read them.
    """
    from mlrkit.config_versions import drop_removed

    fa, fb = _flat(drop_removed(a, 1)[0]), _flat(drop_removed(b, 1)[0])
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k in ignore:
            continue
        va, vb = fa.get(k, "<unset>"), fb.get(k, "<unset>")
        if va != vb:
            out.append(f"{k}: {va!r} -> {vb!r}")
    return out
