"""Versions of the saved run configuration (``RUN/config.yaml``) and the migration of older ones.

Every ``config.yaml`` written by mlrkit records ``config_version`` (:data:`CONFIG_VERSION`). A file
without it was written before the typed schema (:mod:`mlrkit.schema`): version 1. Loading a run of
an older version (``evaluate``, ``predict``, ``--resume``, ``sweep``) upgrades its configuration:

* keys and sections **removed on purpose** (:data:`REMOVED`, each with the release and the reason)
  are dropped: nothing read them, so the run did not depend on them;
* keys the older version did not have are filled from the defaults (what the run was trained
  with, since the older code had no such setting);
* one warning line says what was dropped and filled.

Any other key is still an error (a typo or a foreign file is never accepted silently), and a file of
the current version gets no such leniency: a missing key there means the file was damaged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mlrkit.errors import ConfigError

#: the version recorded in every config.yaml written now
CONFIG_VERSION = 2
#: the key that records it (top level of config.yaml)
VERSION_KEY = "config_version"


@dataclass(frozen=True)
class Removed:
    """A key (``section.key``) or a whole section removed on purpose in ``version``."""

    key: str
    version: int
    release: str
    reason: str


#: removed keys and sections, oldest first; a run older than ``version`` drops them when it is loaded
REMOVED: tuple[Removed, ...] = (
    Removed("train.eval_test_each_epoch", 2, "mlrkit 0.1.0 (issue 15)",
            "read nowhere: the test split is evaluated once, on the best checkpoint"),
    Removed("vlpl", 2, "mlrkit 0.1.0 (issue 15)",
            "a section nothing read: VLPL's hyper-parameters are method.tau / method.theta / ..."),
    Removed("prompt", 2, "mlrkit 0.1.0 (issue 15)",
            "a section nothing read: the prompt methods' hyper-parameters are method.* keys"),
    Removed("negation", 2, "mlrkit 0.1.0 (issue 15)",
            "a section no training run read: the negation commands read their own recipe sections"),
)


def config_version(raw: dict[str, Any], source: str = "configuration") -> int:
    """The version of a saved configuration mapping (1 when it records none); a newer one is an error."""
    v = raw.get(VERSION_KEY, 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{source}: {VERSION_KEY} must be a positive integer, got {v!r}")
    if v > CONFIG_VERSION:
        raise ConfigError(f"{source}: {VERSION_KEY} {v} was written by a newer mlrkit (this one reads up to "
                          f"{CONFIG_VERSION}); upgrade mlrkit to load it")
    return v


def drop_removed(raw: dict[str, Any], version: int) -> tuple[dict[str, Any], list[Removed]]:
    """A copy of ``raw`` (without its version key) minus the keys removed after ``version``, and those dropped."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != VERSION_KEY})
    dropped = []
    for r in REMOVED:
        if r.version <= version:
            continue
        section, _, key = r.key.partition(".")
        if not key:
            if section in out:
                del out[section]
                dropped.append(r)
        elif isinstance(out.get(section), dict) and key in out[section]:
            del out[section][key]
            dropped.append(r)
    return out, dropped


def upgrade_message(source: str, version: int, dropped: list[Removed], filled: list[str]) -> str:
    """The one warning line of an upgraded configuration."""
    parts = [f"{source} has config_version {version} (this mlrkit writes {CONFIG_VERSION}); loaded with "
             "its settings upgraded"]
    if dropped:
        parts.append("dropped " + ", ".join(f"{r.key} (removed in {r.release}: {r.reason})" for r in dropped))
    if filled:
        parts.append(f"filled {len(filled)} key(s) the older version did not have with their defaults: "
                     + ", ".join(filled[:8]) + (" ..." if len(filled) > 8 else ""))
    return "; ".join(parts)
