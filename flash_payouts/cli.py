"""The `flash-payouts` command: discovers its sub-commands and turns failures into one line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, commands, loop
from .commands import CommandError
from .settings import ConfigError, add_arguments

PROG = "flash-payouts"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other failure of the command: the usage of a
    command that takes every setting fills a screen and hides the line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    settings_parent = argparse.ArgumentParser(add_help=False)
    add_arguments(settings_parent)
    parser = _Parser(
        prog=PROG,
        description="Boltcard and pull-payment payout monitor for BTCPay Server: a Boltcard "
        "LNURL-withdraw gateway, a payout ledger, a Prometheus exporter, Grafana dashboards "
        "and a REST API.",
        epilog="Every setting is also read from its FLASH_* environment variable; see "
        "docs/configuration.md. `flash-payouts COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub, [settings_parent])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=_log_level(args),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every step at INFO; the command prints its own one-line result.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            result = loop.run(result)
        return int(result or 0)
    except (ConfigError, CommandError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2) if isinstance(exc, CommandError) else 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _log_level(args: argparse.Namespace) -> int:
    name = getattr(args, "log_level", None) or os.environ.get("FLASH_LOG_LEVEL") or "info"
    return getattr(logging, name.upper(), logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
