"""``console.log``: every run keeps what it printed (epoch lines, warnings, progress lines)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO, Any


class ConsoleLog(logging.Handler):
    """A context that appends the ``mlrkit`` logger's records, Python warnings and :meth:`write` lines to a file.

    ``path=None`` (ranks other than 0) makes it a no-op. While active, the ``mlrkit`` logger passes
    INFO records (a library user who configured no logging still gets them in the file; the
    console shows only what their own logging set-up shows).
    """

    def __init__(self, path: str | Path | None) -> None:
        super().__init__(logging.INFO)
        self.path = Path(path) if path is not None else None
        self.fh: IO[str] | None = None
        self.setFormatter(logging.Formatter("%(message)s"))

    def __enter__(self) -> ConsoleLog:
        if self.path is None:
            return self
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.fh.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
        self.logger = logging.getLogger("mlrkit")
        self.old_level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        self.captured = logging.captureWarnings(True) or None
        logging.getLogger("py.warnings").addHandler(self)
        _ACTIVE.append(self)
        return self

    def emit(self, record: logging.LogRecord) -> None:
        if self.fh is not None:
            prefix = "" if record.levelno < logging.WARNING or "WARNING" in record.getMessage()[:10] else \
                f"{record.levelname}: "
            self.write(prefix + self.format(record))

    def write(self, line: str) -> None:
        if self.fh is not None:
            self.fh.write(line.rstrip("\n") + "\n")
            self.fh.flush()

    def __exit__(self, *exc: Any) -> None:
        if self.fh is None:
            return
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)
        logging.getLogger("py.warnings").removeHandler(self)
        logging.captureWarnings(False)
        _ACTIVE.remove(self)
        self.fh.close()
        self.fh = None


_ACTIVE: list[ConsoleLog] = []


def console_write(line: str) -> None:
    """Append a line to the active run's console.log (if any)."""
    for c in _ACTIVE:
        c.write(line)
