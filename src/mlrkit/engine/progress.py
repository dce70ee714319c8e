"""Progress that shows up everywhere: a tqdm bar on a terminal, periodic log lines elsewhere.

Batch systems (SLURM, nohup, CI) capture stderr into a file where a tqdm bar is either absent or
a soup of carriage returns. When stderr is not a terminal, :func:`progress` logs a plain line
every ``MLRKIT_PROGRESS_EVERY`` seconds (default 30) and at the end::

    features (train): 1,536/4,000 (38%)  51.2 it/s  elapsed 0:00:30  ETA 0:00:48

(rate in items per second; items are what ``update(n)`` counts: images for feature caching,
batches for epochs). The lines go through the ``mlrkit`` logger, so runs also keep them in
``console.log``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("mlrkit")


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("MLRKIT_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``, iteration) as periodic log lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 every: float | None = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.n = total, desc, 0
        self.every = _interval() if every is None else every
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False

    def line(self) -> str:
        el = time.monotonic() - self.t0
        rate = self.n / el if el > 0 else 0.0
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            done = f"{self.n:,}/{self.total:,} ({100 * self.n / self.total:.0f}%)"
            eta_s = f"  ETA {_hms(eta)}" if eta == eta else ""
        else:
            done, eta_s = f"{self.n:,}", ""
        extra = f"  {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}  {rate:.1f} it/s  elapsed {_hms(el)}{eta_s}{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line())

    def set_postfix(self, refresh: bool = False, **kw: Any) -> None:
        self.postfix = "  ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if time.monotonic() - self.t0 >= self.every:  # short steps stay silent
                log.info("%s", self.line())

    def __iter__(self) -> Iterator:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, leave: bool = False):
    """A progress reporter: tqdm on a terminal, :class:`LineProgress` lines otherwise, nothing if disabled."""
    if not enabled:
        return _Silent(iterable, total=total, desc=desc)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=leave)
    return LineProgress(iterable, total=total, desc=desc)
