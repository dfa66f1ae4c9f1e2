"""`flash-payouts dashboards`: generate the provisioning files; give each store its own role."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..settings import load
from . import CommandError

GRAFANA_PASSWORD_DIR = "/etc/grafana/flash-stores"


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards, alert rules and provisioning")
    actions = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    g = actions.add_parser(
        "generate",
        parents=parents,
        help="write the provisioning files (dashboards, alert rules, datasources, Prometheus)",
        description="Write every file of provisioning/ from the code in dashboards/: Grafana "
        "datasources, dashboards and alerting, the Prometheus configuration, rules and promtool "
        "tests, and the Alertmanager configuration. --grafana-url, --api-url and --runbook-url "
        "set the links the alerts and boards carry.",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write into (default: provisioning/ of this checkout)",
    )
    g.add_argument(
        "--org-per-store",
        action="store_true",
        help="also provision one Grafana organisation per store that has its own role (see "
        "`dashboards roles`): the boards, and the ledger as that store's role, which reads "
        "only the store's rows",
    )
    g.add_argument(
        "--password-dir",
        default=GRAFANA_PASSWORD_DIR,
        metavar="DIR",
        help="with --org-per-store: where Grafana reads the roles' password files "
        f"(default {GRAFANA_PASSWORD_DIR})",
    )
    g.set_defaults(handler=_generate)

    r = actions.add_parser(
        "roles",
        parents=parents,
        help="give each store a read-only PostgreSQL role that sees only its own rows",
        description="Create (or update) one login role per store, in the group "
        "flash_store_readers, which PostgreSQL's row-level security limits to that store's "
        "rows through every Grafana view. Each role's password is kept in a file of "
        "--password-dir named after the role (made when missing, mode 0600, never printed); "
        "Grafana reads it there. Needs the ledger on PostgreSQL 15 or later.",
    )
    r.add_argument(
        "--password-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of the roles' password files (mount it into Grafana)",
    )
    r.add_argument(
        "--store",
        action="append",
        default=None,
        metavar="ID",
        help="only this store (repeatable; default: every connected store)",
    )
    r.set_defaults(handler=_roles)


async def _generate(args: argparse.Namespace) -> int:
    # Imported here: grafanalib is only needed by this command, not by serve or migrate.
    from dashboards.alerts import Thresholds
    from dashboards.generate import DEFAULT_OUT, generate
    from dashboards.provisioning import StoreOrg, Targets

    settings = load(args)
    out = args.out or DEFAULT_OUT
    thresholds = Thresholds(grafana_url=settings.grafana_url, runbook_url=settings.runbook_url)
    orgs = None
    if args.org_per_store:
        from ledger.readers import ReadersUnavailable, check_available, store_roles

        from ..runtime import open_ledger

        engine = await open_ledger(settings)
        try:
            async with engine.connect() as conn:
                await check_available(conn)
                roles = await store_roles(conn)
        except ReadersUnavailable as exc:
            raise CommandError(str(exc)) from None
        finally:
            await engine.dispose()
        if not roles:
            raise CommandError("no store has its own role yet: run `dashboards roles` first")
        orgs = [
            StoreOrg(org_id=2 + i, store_id=r.store_id, name=r.name, role=r.role)
            for i, r in enumerate(roles)
        ]
    targets = Targets(api_url=settings.api_base_url, password_dir=args.password_dir)
    try:
        written = generate(out, thresholds, targets, orgs)
    except OSError as exc:
        raise CommandError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} files under {out}")
    if orgs:
        print("create these Grafana organisations first, in this order (see docs/grafana.md):")
        for org in orgs:
            print(f"  {org.org_id}\t{org.title}")
    return 0


async def _roles(args: argparse.Namespace) -> int:
    from ledger.readers import (
        ReadersUnavailable,
        check_available,
        ensure_store_role,
        role_name,
        store_ids,
    )

    from ..runtime import open_ledger

    folder: Path = args.password_dir
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot use {folder}: {exc.strerror or exc}") from None
    engine = await open_ledger(load(args))
    try:
        async with engine.begin() as conn:
            await check_available(conn)
            known = await store_ids(conn)
            wanted = args.store or known
            unknown = [s for s in wanted if s not in known]
            if unknown:
                raise CommandError(f"no connected store {unknown[0]!r}")
            for store_id in wanted:
                role = role_name(store_id)
                password = _password(folder / role)
                await ensure_store_role(conn, store_id, password)
                print(f"store {store_id}: role {role}, password in {folder / role}")
    except ReadersUnavailable as exc:
        raise CommandError(str(exc)) from None
    finally:
        await engine.dispose()
    return 0


def _password(path: Path) -> str:
    """The role's password from its file; a new one, written 0600, when there is none yet."""
    from ledger.readers import new_password

    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    if existing:
        return existing
    password = new_password()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    return password
