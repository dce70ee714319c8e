"""``mlrkit <command>``: every command has ``--help`` with an example."""

from __future__ import annotations

import argparse
import logging
import sys

from mlrkit.cli.common import Formatter, Parser, check_option_ranges
from mlrkit.errors import MlrkitError

log = logging.getLogger("mlrkit")


def build_parser() -> argparse.ArgumentParser:
    from mlrkit import __version__
    from mlrkit.cli import commands

    parser = Parser(
        prog="mlrkit",
        description="Multi-label image recognition with missing labels (partial / single-positive).",
        epilog="example:\n  mlrkit demo\n  mlrkit train --dataset yeast --method linear --loss an "
        "--labels single-positive --seed 0 --epochs 20 --out runs/yeast-an",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"mlrkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    import os

    from mlrkit.engine.host_memory import configure_host_allocator

    try:
        log.debug("host allocator: %s", configure_host_allocator())
    except MlrkitError as e:
        print(f"mlrkit: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: join the group, rank 0 prints
        from mlrkit.engine.distributed import init_distributed

        env = init_distributed(getattr(args, "device", None) or "auto")
        if not env.is_main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this process
    try:
        check_option_ranges(args)
        return int(args.handler(args) or 0)
    except MlrkitError as e:
        if args.verbose:
            raise
        print(f"mlrkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlrkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
