"""Typed configuration sections: the one mechanism that parses and checks every config section.

A section is a dataclass deriving from :class:`Section`; each field is a setting with its type
(the annotation) and optionally a range or a set of choices (:func:`setting`). Its owner (the run
config for ``data``/``labels``/``train``/``vl``, a method for ``boostlu``/``scpnet``/``features``,
a loss or a method for the open sections' hyper-parameters) registers it; :meth:`Section.parse`
turns a mapping into a checked instance:

* an unknown key is a :class:`~mlrkit.errors.ConfigError` with a did-you-mean suggestion;
* a value of the wrong type names the key (``train.epochs must be an integer, got 'abc'``);
* a value out of range or not among the choices names the key, the bound and the value;
* :meth:`Section.check` adds rules that involve several fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlrkit.errors import ConfigError


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False,
            choices: tuple | None = None, help: str = "") -> Any:
    """A section field with its checks: ``min``/``max`` bounds (``min_open``: strictly greater,
    ``max_open``: strictly less), ``choices`` (allowed values) and a one-line ``help``."""
    meta = {"min": min, "max": max, "min_open": min_open, "max_open": max_open, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def suggest(key: str, valid: list[str]) -> str:
    """`` (did you mean x?)`` for the closest valid names, or an empty string."""
    close = difflib.get_close_matches(str(key), valid, n=2)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown_key(key: str, where: str, valid: list[str]) -> ConfigError:
    full = f"{where}.{key}" if where else str(key)
    return ConfigError(f"unknown config key {full!r}{suggest(key, valid)}; valid: {', '.join(valid) or 'none'}")


@dataclass
class Section:
    """Base of a typed config section (see the module docstring)."""

    #: the section's name in a recipe (set by subclasses that are top-level sections)
    section_name: ClassVar[str] = ""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls, d: Any, where: str | None = None) -> Section:
        """A checked instance from a mapping (``None``: the defaults); ``where`` names the section in errors."""
        where = cls.section_name if where is None else where
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"config section {where or '<root>'} must be a mapping, got {d!r}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in d.items():
            if k not in hints or k not in cls.keys():
                raise unknown_key(k, where, cls.keys())
            key = f"{where}.{k}" if where else k
            tp = hints[k]
            if isinstance(tp, type) and issubclass(tp, Section):
                kwargs[k] = tp.parse(v, key)
            else:
                kwargs[k] = coerce(v, tp, key)
        obj = cls(**kwargs)
        for f in dataclasses.fields(cls):
            check_range(getattr(obj, f.name), f.metadata, f"{where}.{f.name}" if where else f.name)
        obj.check(where)
        return obj

    def check(self, where: str) -> None:
        """Rules across fields (override); raise ConfigError naming the key."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_range(value: Any, meta: Any, key: str) -> None:
    """The ``min``/``max``/``choices`` of a :func:`setting` (None values pass: they mean "unset")."""
    if not meta or value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None or hi is not None) and not math.isfinite(float(value)):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if lo is not None and (value <= lo if meta.get("min_open") else value < lo):
            raise ConfigError(f"{key} must be {'>' if meta.get('min_open') else '>='} {lo}, got {value!r}")
        if hi is not None and (value >= hi if meta.get("max_open") else value > hi):
            raise ConfigError(f"{key} must be {'<' if meta.get('max_open') else '<='} {hi}, got {value!r}")


def coerce(v: Any, tp: Any, key: str) -> Any:
    """``v`` as type ``tp`` (bool, int, float, str, list/tuple of those, dict, Optional/Union), or a
    ConfigError naming ``key``; YAML scalars given as strings (``--set``) are read as their type."""
    if tp is Any:
        return v
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(v, a, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: bad value {v!r}")
    if origin is typing.Literal:
        if v not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, typing.get_args(tp)))}; got {v!r}")
        return v
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no"):
            return v.lower() in ("true", "yes")
        raise ConfigError(f"{key} must be true or false, got {v!r}")
    if tp is int:
        if isinstance(v, bool):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    if tp is float:
        if isinstance(v, bool) or isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{key} must be a number, got {v!r}")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {v!r}") from None
    if tp is str:
        if isinstance(v, (dict, list, bool)) or v is None:
            raise ConfigError(f"{key} must be a string, got {v!r}")
        return str(v)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {v!r}")
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis and origin is tuple and len(args) != len(v):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {v!r}")
        item = args[0] if args else Any
        return [coerce(x, item, f"{key}[{i}]") for i, x in enumerate(v)]
    if origin is dict or tp is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{key} must be a mapping, got {v!r}")
        return dict(v)
    return v


def check_params(params: dict[str, Any], fn: Any, where: str, *, skip: tuple[str, ...] = ("self",),
                 component: str = "") -> None:
    """Check an open section's hyper-parameters against the signature of ``fn`` (a class's
    ``__init__`` or a builder): unknown names (with did-you-mean) and values of the wrong simple type."""
    import inspect

    sig = inspect.signature(fn)
    names = [p for p, par in sig.parameters.items()
             if p not in skip and par.kind not in (par.VAR_POSITIONAL, par.VAR_KEYWORD)]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only skips the type check
        hints = {}
    for k, v in params.items():
        if k not in names:
            what = f"{where} {component!r}" if component else where
            raise ConfigError(f"unknown config key '{where}.{k}'{suggest(k, names)} ({what} has no hyper-parameter "
                              f"{k!r}); valid: {', '.join(names) or 'none'}")
        tp = hints.get(k)
        if tp is not None and _simple(tp):
            coerce(v, tp, f"{where}.{k}")


def _simple(tp: Any) -> bool:
    """Types :func:`check_params` checks: bool/int/float/str and their Optional forms."""
    if tp in (bool, int, float, str):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(a is type(None) or a in (bool, int, float, str) for a in typing.get_args(tp))
    return False
