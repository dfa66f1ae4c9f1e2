"""`flash-payouts migrate`: bring the ledger's schema to the newest (or a given) revision."""

from __future__ import annotations

import argparse
import os

import alembic.util
from sqlalchemy.exc import DBAPIError, OperationalError

from ledger import migrate

from ..runtime import describe_url
from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate",
        parents=parents,
        help="create or upgrade the ledger schema",
        description="Apply the ledger's migrations to --database-url (an empty database included).",
    )
    p.add_argument("--revision", default="heads", help="target revision (default: the newest)")
    p.add_argument(
        "--downgrade", action="store_true", help="go down to --revision instead (base: empty)"
    )
    p.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    settings = load(args)
    where = describe_url(settings.database_url)
    if settings.grafana_db_password:
        # The migration that creates Grafana's reader role reads its password from here.
        os.environ["FLASH_GRAFANA_DB_PASSWORD"] = settings.grafana_db_password
    try:
        if args.downgrade:
            migrate.downgrade(settings.database_url, args.revision)
        else:
            migrate.upgrade(settings.database_url, args.revision)
        current = migrate.current_revision(settings.database_url)
    except (OSError, DBAPIError, OperationalError, alembic.util.CommandError) as exc:
        # alembic.util.CommandError: a revision that does not exist, or cannot be reached.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CommandError(f"cannot migrate database {where}: {reason}") from None
    print(f"ledger {where} at revision {current or 'base (empty)'}")
    return 0
