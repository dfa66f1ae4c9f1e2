"""`python -m bench [SUITE ...]`: run benchmark suites, save results, rewrite the table."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from .common import DEFAULT_PG, BenchOptions, print_results, save
from .report import SUITES, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"default: all of {', '.join(SUITES)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not a record"
    )
    parser.add_argument(
        "--postgres-url", default=DEFAULT_PG, help="server for the benchmark databases"
    )
    parser.add_argument("--report", type=Path, default=None, help="where to write the table")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep loaded benchmark databases and reuse them when loaded the same way "
        "(also FLASH_BENCH_KEEP=1)",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        print(
            f"bench: error: unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}",
            file=sys.stderr,
        )
        return 2
    if args.keep:
        os.environ["FLASH_BENCH_KEEP"] = "1"
    options = BenchOptions(postgres_url=args.postgres_url, quick=args.quick)
    for suite in args.suites or SUITES:
        module = importlib.import_module(f"bench.{suite}")
        print(f"== {suite}", flush=True)
        results = asyncio.run(module.run(options))
        print_results(results)
        if not args.quick:
            save(suite, results)
    if not args.quick:
        path = write_report(args.report)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
