"""What every command module of the CLI shares: the help formatter and :func:`add_command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

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
        check_option_ranges(out)  # values from the recipe get the command line's range checks too
        return out


class Parser(argparse.ArgumentParser):
    """The CLI's parser: a usage error is one ``mlrkit: error:`` line (exit status 2), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"mlrkit: error: {self.prog}: {message} (see {self.prog} --help)\n")


# Every numeric command-line option, by its argparse dest: (low, high, low exclusive, high exclusive), None =
# unbounded. A dest means the same everywhere (a batch size is >= 1 in every command). Options not listed are
# refused by tests/test_badinput_cli.py, so that a new numeric option cannot skip its range check.
OPTION_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "seed": (0, None, False, False),
    "epochs": (0, None, False, False),
    "batch_size": (1, None, False, False),
    "batch": (1, None, False, False),
    "lr": (0, None, True, False),
    "threshold": (0, 1, False, False),
    "k": (1, None, False, False),
    "top_k": (1, None, False, False),
    "limit": (1, None, False, False),
    "image_size": (1, None, False, False),
    "images": (1, None, False, False),
    "classes": (1, None, False, False),
    "cache_views": (1, None, False, False),
    "steps": (1, None, False, False),
    "max_steps": (1, None, False, False),
    "eval_every": (0, None, False, False),
    "log_every": (1, None, False, False),
    "checkpoint_every": (0, None, False, False),
    "ema": (0, 1, False, True),
    "heldout_mosaics": (1, None, False, False),
    "repeats": (1, None, False, False),
    "threads": (1, None, False, False),
    "jobs": (1, None, False, False),
    "rounds": (0, None, False, False),
    "per_image": (1, None, False, False),
    "max_absent": (1, None, False, False),
    "llm_retries": (0, None, False, False),
    "text_chunk": (0, None, False, False),
    "fill": (0, 255, False, False),
    "tau": (0, None, True, False),
    "theta": (0, 1, False, False),
    "delta": (0, 1, False, False),
    "s": (0, 1, False, False),
    "alpha": (0, None, True, False),
    "beta": (0, 1, False, True),
    "subset_prob": (0, 1, False, False),
    "p_negated": (0, 1, False, False),
    "val_fraction": (0, 1, False, True),
    "weight_decay": (0, None, False, False),
    "time_limit": (0, None, True, False),
    "timeout": (0, None, True, False),
    "llm_timeout": (0, None, True, False),
}


def check_option_ranges(args: argparse.Namespace) -> None:
    """Every numeric option given is finite and in its :data:`OPTION_RANGES` interval (a ConfigError naming
    the flag and the value otherwise)."""
    import math

    from mlrkit.errors import ConfigError
    from mlrkit.schema import check_range

    for dest, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + dest.replace("_", "-")
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        low, high, lo_open, hi_open = OPTION_RANGES.get(dest, (None, None, False, False))
        check_range(value, {"min": low, "max": high, "min_open": lo_open, "max_open": hi_open}, flag)


DEVICE_HELP = "auto (the accelerator when present, else the CPU), cpu, cuda or cuda:N"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` for a command that runs a model (default ``auto``; :func:`mlrkit.engine.devices.resolve_device`)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def command_device(args: argparse.Namespace):
    """The device of a command that runs a model (``--device``, default auto: the accelerator when
    present); on the CPU it also applies the thread policy for large models (the usable CPUs), unless
    the command was given ``--threads``."""
    from mlrkit.engine.devices import resolve_device
    from mlrkit.engine.threads import default_threads

    dev = resolve_device(getattr(args, "device", "auto"))
    if dev.type == "cpu" and not getattr(args, "threads", None):
        default_threads()
    return dev


def add_loop_arguments(parser: argparse.ArgumentParser, run_dir_example: str, unit: str, add=None) -> None:
    """The options of a command that trains on the shared loop (:mod:`mlrkit.engine.loop`): its run
    directory, ``--resume``, ``--amp`` and the checkpoint interval. ``add``: the function that declares
    an option (default ``parser.add_argument``; a recipe-layered command passes its own)."""
    add = add or parser.add_argument
    add("--run-dir", default=None,
        help=f"run directory (config.yaml, metrics.jsonl, last.pt, results.json); default: --out with the suffix "
        f".run, e.g. {run_dir_example}")
    add("--resume", action="store_true",
        help=f"continue the run in --run-dir exactly where it stopped (same options; it fails otherwise), as "
        f"`mlrkit train --resume`; the {unit} already done are not repeated")
    add("--amp", choices=["auto", "on", "off"], default="off",
        help="autocast (mixed precision) as train.amp: auto = bf16 on CUDA devices that support it; off (default) "
        "= fp32, as the shipped checkpoints were trained")
    add("--checkpoint-every", type=float, default=60.0,
        help="write last.pt at most every this many seconds (0 = at every metrics row)")


def loop_run_dir(args: argparse.Namespace) -> Path:
    """``--run-dir``, or ``--out`` with the suffix ``.run``."""
    from mlrkit.errors import ConfigError

    if args.run_dir:
        return Path(args.run_dir)
    if not args.out:
        raise ConfigError("give --out (and optionally --run-dir)")
    return Path(args.out).with_suffix(".run")
