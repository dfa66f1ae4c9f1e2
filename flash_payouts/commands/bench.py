"""`flash-payouts bench [SUITE ...]`: the benchmark harness (same as `python -m bench`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suites and rewrite docs/benchmarks.md",
        description="Run benchmark suites (each beside a same-run baseline), save "
        "bench/results/*.json and regenerate docs/benchmarks.md.",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from bench.__main__ import main

    return main(args.rest)
