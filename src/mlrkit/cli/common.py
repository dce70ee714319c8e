"""What every command module of the CLI shares: the help formatter and :func:`add_command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows each flag's default."""


def add_command(sub, name: str, help: str, example: str, handler: Handler) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` ends with its example(s)."""
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=Formatter)
    p.set_defaults(handler=handler)
    return p


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` for a command that runs a model (default ``auto``; :func:`mlrkit.engine.devices.resolve_device`)."""
    parser.add_argument("--device", default="auto",
                        help="auto (the accelerator when present, else the CPU), cpu, cuda or cuda:N")


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
