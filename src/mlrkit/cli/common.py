"""What every command module of the CLI shares: the help formatter and :func:`add_command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows each flag's default."""


def add_command(sub, name: str, help: str, example: str, handler: Handler,
                formatter: type[argparse.HelpFormatter] = Formatter) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` ends with its example(s)."""
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=formatter)
    p.set_defaults(handler=handler)
    return p


PlainFormatter = argparse.RawDescriptionHelpFormatter


class LayeredFlags:
    """Flags of a command whose values come from three layers, merged by the run config's own
    :func:`~mlrkit.config.deep_merge`: the flags' defaults -> the section ``section`` of a ``--config``
    recipe (``base:`` chains as for ``mlrkit train``; keys are flag names with ``_`` or ``-``) -> the
    flags given on the command line.

    Flags are added through :meth:`add`, which keeps each flag's default here and gives argparse
    ``None``, so that a flag given on the command line is told apart from one left alone with public
    argparse only; ``--help`` still shows the defaults. :meth:`resolve` returns the merged namespace.
    """

    def __init__(self, parser: argparse.ArgumentParser, section: str) -> None:
        self.parser, self.section = parser, section
        self.defaults: dict[str, object] = {}
        parser.set_defaults(layered_flags=self)
        self.add("--config", help=f"recipe YAML (its '{section}:' section sets flag values; flags given here win)")

    def add(self, *flags: str, default: object = None, help: str = "", **kw) -> argparse.Action:
        action = kw.get("action")
        if action in ("store_true", "append") and default is None:
            default = False if action == "store_true" else []
        shown = f" (default: {default})" if default not in (None, [], False) else ""
        act = self.parser.add_argument(*flags, default=None, help=(help + shown).strip() or None, **kw)
        self.defaults[act.dest] = default
        return act

    def resolve(self, args: argparse.Namespace) -> argparse.Namespace:
        """``args`` with every flag set: default, then the recipe section, then the command line."""
        from mlrkit.config import deep_merge, load_recipe
        from mlrkit.errors import ConfigError
        from mlrkit.schema import unknown_key

        given = {k: v for k, v in vars(args).items() if k in self.defaults and v is not None}
        recipe: dict = {}
        if given.get("config"):
            doc = load_recipe(given["config"])
            recipe = doc.get(self.section, {})
            if not isinstance(recipe, dict):
                raise ConfigError(f"{given['config']}: section {self.section!r} must be a mapping, got {recipe!r}")
            recipe = {str(k).replace("-", "_"): v for k, v in recipe.items()}
            keys = [k for k in self.defaults if k != "config"]
            for k, v in recipe.items():
                if k not in keys:
                    raise unknown_key(k, self.section, keys)
                if isinstance(self.defaults[k], list) and not isinstance(v, list):
                    recipe[k] = [v]
        merged = deep_merge(deep_merge(self.defaults, recipe), given)
        out = argparse.Namespace(**vars(args))
        for k, v in merged.items():
            setattr(out, k, v)
        return out
