"""`flash-payouts demo`: the whole system on SQLite with simulated BTCPay and card traffic."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..demo import DemoOptions, run_demo
from ..settings import load
from . import CommandError

DEMO_DATABASE_FILE = "flash-payouts-demo.db"
DEMO_DATABASE_URL = f"sqlite+aiosqlite:///./{DEMO_DATABASE_FILE}"


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="run everything with a simulated BTCPay and simulated card traffic",
        description="Start the BTCPay simulator and all three listeners on an embedded SQLite "
        "ledger (./flash-payouts-demo.db, new on every run, unless --database-url or "
        "FLASH_DATABASE_URL names one), connect a demo store, issue cards, and drive real "
        "taps, callbacks, payouts and webhooks through them, with some suspicious activity.",
    )
    p.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until Ctrl-C)",
    )
    p.add_argument("--cards", type=_count, default=25, metavar="N", help="cards to issue (25)")
    p.add_argument(
        "--rate",
        type=_positive,
        default=4.0,
        metavar="TAPS_PER_SECOND",
        help="card taps per second, all cards together (4)",
    )
    p.add_argument(
        "--history",
        type=_count,
        default=0,
        metavar="N",
        help="bulk-load N historical payouts over the last months first",
    )
    p.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also start the `prometheus` on the PATH, scraping the demo",
    )
    p.add_argument("--seed", type=int, help="seed the random choices")
    p.set_defaults(handler=_demo)


async def _demo(args: argparse.Namespace) -> int:
    if args.cards == 0:
        raise CommandError("--cards must be at least 1")
    options = DemoOptions(
        duration=args.duration,
        cards=args.cards,
        rate=args.rate,
        history=args.history,
        with_prometheus=args.with_prometheus,
        seed=args.seed,
    )
    settings = load(args)
    if not args.database_url and not os.environ.get("FLASH_DATABASE_URL"):
        # Without a database named, the demo keeps to a file of its own, new on every run, so
        # it never mixes with a real ledger nor with an earlier run's vanished simulator.
        settings = replace(settings, database_url=DEMO_DATABASE_URL)
        for suffix in ("", "-wal", "-shm"):
            Path(DEMO_DATABASE_FILE + suffix).unlink(missing_ok=True)
    return await run_demo(settings, options)
