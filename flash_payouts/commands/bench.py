"""`flash-payouts bench [SUITE ...]`: the benchmark harness (same as `python -m bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import DEFAULT_PG
from bench.report import SUITES


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suites and rewrite docs/benchmarks.md",
        description="Run benchmark suites (each beside a same-run baseline), save "
        "bench/results/*.json and regenerate docs/benchmarks.md.",
    )
    p.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"default: all of {', '.join(SUITES)}"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a record")
    p.add_argument("--postgres-url", default=DEFAULT_PG, help="server for the benchmark databases")
    p.add_argument("--report", type=Path, default=None, help="where to write the table")
    p.add_argument("--keep", action="store_true", help="keep and reuse loaded benchmark databases")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from bench.__main__ import main

    argv = [*args.suites, "--postgres-url", args.postgres_url]
    if args.quick:
        argv.append("--quick")
    if args.keep:
        argv.append("--keep")
    if args.report:
        argv += ["--report", str(args.report)]
    return main(argv)
