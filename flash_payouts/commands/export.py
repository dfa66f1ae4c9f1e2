"""`flash-payouts export payouts|card-usage`: the API's exports, written to a file or stdout.

The same rows, columns and spreadsheet as ``GET /payouts/export`` and
``GET /boltcards/usage/export``, read straight from the ledger (no credentials: whoever runs the
command can read the ledger anyway). A file is written beside its target and renamed into place
when complete, so a failed export never leaves a half-written file under the asked name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from multidict import MultiDict

from api import params
from api.errors import ApiError
from api.export import FORMATS, Export, payouts_export, usage_export, write_file
from ledger.api_queries import PAYOUT_SORTS, USAGE_SORTS, PayoutFilter
from ledger.db import readonly
from ledger.status import STATUSES
from ledger.stores import get_store

from ..runtime import open_ledger
from ..settings import load
from . import CommandError

# The command's flag for each API parameter, to name it in errors.
_FLAGS = {"startDate": "--start", "endDate": "--end", "status": "--status"}


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export payouts or card usage as CSV, JSON or a spreadsheet",
        description="Write the payouts or the per-card usage of a store as CSV, a JSON array or "
        "an .xlsx spreadsheet (typed cells, frozen header, autofilter, a summary sheet), "
        "exactly as the API's exports.",
    )
    what = p.add_subparsers(dest="export_what", metavar="WHAT", required=True)

    def common(name: str, help_text: str, sorts: tuple[str, ...], default_sort: str):
        q = what.add_parser(name, parents=parents, help=help_text, description=help_text)
        q.add_argument("--store", required=True, help="BTCPay store id")
        q.add_argument(
            "--start", metavar="WHEN", help="from this date (UTC) or ISO 8601 time, inclusive"
        )
        q.add_argument(
            "--end", metavar="WHEN", help="until this date (inclusive) or time (exclusive)"
        )
        q.add_argument("--sort", choices=sorts, default=default_sort, help="sort key")
        q.add_argument("--order", choices=("asc", "desc"), default="desc", help="sort order")
        q.add_argument("--format", choices=FORMATS, default="csv", help="file format")
        q.add_argument(
            "--output",
            "-o",
            metavar="PATH",
            help="file to write (default: standard output, except for xlsx on a terminal)",
        )
        return q

    payouts = common(
        "payouts",
        "Every payout of the store matching the filters.",
        tuple(PAYOUT_SORTS),
        "createdAt",
    )
    payouts.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help=f"only these statuses ({', '.join(STATUSES)}); repeat or separate by commas",
    )
    payouts.add_argument("--card", metavar="ID", help="only the payouts of this card")
    payouts.set_defaults(handler=_export, build=_payouts)

    usage = common(
        "card-usage", "Usage of every card with activity in the period.", USAGE_SORTS, "totalAmount"
    )
    usage.set_defaults(handler=_export, build=_usage)


def _query(args: argparse.Namespace) -> MultiDict[str]:
    query: MultiDict[str] = MultiDict()
    if args.start:
        query.add("startDate", args.start)
    if args.end:
        query.add("endDate", args.end)
    for status in getattr(args, "status", []):
        query.add("status", status)
    return query


def _payouts(engine, args: argparse.Namespace) -> Export:  # type: ignore[no-untyped-def]
    q = _query(args)
    start, end = params.period(q)
    f = PayoutFilter(
        store_id=args.store, start=start, end=end, statuses=params.statuses(q), card_id=args.card
    )
    return payouts_export(engine, f, sort=args.sort, descending=args.order == "desc")


def _usage(engine, args: argparse.Namespace) -> Export:  # type: ignore[no-untyped-def]
    first_day, last_day = params.day_period(_query(args), default_days=None)
    return usage_export(
        engine, args.store, first_day, last_day, sort=args.sort, descending=args.order == "desc"
    )


async def _export(args: argparse.Namespace) -> int:
    if args.format == "xlsx" and not args.output and sys.stdout.isatty():
        raise CommandError("a spreadsheet is not for a terminal: give --output FILE.xlsx")
    engine = await open_ledger(load(args))
    try:
        async with engine.connect() as conn:
            if await get_store(conn, args.store) is None:
                raise CommandError(f"no store {args.store} in the ledger")
        try:
            export = args.build(readonly(engine), args)
        except ApiError as exc:
            name, _, problem = exc.message.partition(": ")
            raise CommandError(f"{_FLAGS.get(name, name)}: {problem}") from None
        if args.output:
            await _to_file(export, args.format, Path(args.output))
        else:
            await write_file(args.format, export, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    finally:
        await engine.dispose()
    return 0


async def _to_file(export: Export, fmt: str, target: Path) -> None:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise CommandError(f"no folder {folder} for {target}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            await write_file(fmt, export, out)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {target} ({target.stat().st_size} bytes)", file=sys.stderr)
