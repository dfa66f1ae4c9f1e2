"""`flash-payouts docs generate`: rewrite the generated reference documents."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..generated import ROOT, write_docs


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("docs", help="generated documentation")
    docs_sub = p.add_subparsers(dest="docs_command", metavar="ACTION", required=True)
    g = docs_sub.add_parser(
        "generate",
        help="rewrite docs/configuration.md and docs/metrics.md",
        description="Rewrite the reference documents generated from the code.",
    )
    g.add_argument(
        "--root", type=Path, default=ROOT, help="project folder (default: this checkout)"
    )
    g.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    changed = write_docs(args.root)
    print("updated: " + ", ".join(changed) if changed else "generated documents are up to date")
    return 0
