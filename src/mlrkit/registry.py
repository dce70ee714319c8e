"""One registry per extensible concept (datasets, protocols, losses, methods, VL backends).

Each entry has a name, the object it names and a one-line description; ``mlrkit list <kind>``
prints them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from mlrkit.errors import MlrkitError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A named collection with ``register``/``get``/``list``.

    ``get`` of an unknown name raises :class:`MlrkitError` with close matches suggested.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name", "one line")`` on a function or class."""

        def deco(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description or "\n" in description:
            raise ValueError(f"{self.kind} {name!r} needs a one-line description")
        self._entries[name] = Entry(name, obj, description)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            plural = (f"{self.kind}es" if self.kind.endswith("s")  # loss -> losses
                      else f"{self.kind[:-1]}ies" if self.kind.endswith("y") else f"{self.kind}s")  # strategies
            raise MlrkitError(
                f"unknown {self.kind} {name!r}{hint}; `mlrkit list {plural}` shows all"
            ) from None

    def remove(self, name: str) -> None:
        """Forget ``name`` (e.g. an entry registered by a test or a notebook for the time of an experiment)."""
        self.entry(name)
        del self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def list(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def import_modules(package: str, first: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Import the modules of ``package`` so that each registers its entries: ``first`` in that order
    (the order ``mlrkit list`` shows), then every other module of the package (a new file is picked up
    without editing a list), except ``skip``."""
    import pkgutil
    from importlib import import_module

    pkg = import_module(package)
    rest = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in first and m.name not in skip)
    for mod in (*first, *rest):
        import_module(f"{package}.{mod}")
