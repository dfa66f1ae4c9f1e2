"""`flash-payouts tokens`: local API tokens for tools and Grafana (create, list, revoke)."""

from __future__ import annotations

import argparse

from ledger.tokens import ROLES, create_token, list_tokens, revoke_token

from ..runtime import open_ledger
from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tokens",
        help="create, list or revoke local API tokens",
        description="Local API tokens are bound to one store with the role viewer or manager. "
        "Only a hash is stored: the token is printed once, when it is created.",
    )
    actions = p.add_subparsers(dest="tokens_action", metavar="ACTION", required=True)

    create = actions.add_parser("create", parents=parents, help="create a token, print it once")
    create.add_argument("--store", required=True, help="BTCPay store id the token may read")
    create.add_argument("--role", required=True, choices=ROLES, help="viewer or manager")
    create.add_argument("--label", default=None, help="what the token is for (shown in list)")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", parents=parents, help="list tokens (never their text)")
    listing.add_argument("--store", default=None, help="only this store's tokens")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", parents=parents, help="revoke a token by its id")
    revoke.add_argument("id", help="the token id shown by `tokens list`")
    revoke.set_defaults(handler=_revoke)


async def _create(args: argparse.Namespace) -> int:
    if not args.store.strip() or len(args.store) > 64:
        raise CommandError("--store must be a store id of at most 64 characters")
    if args.label is not None and len(args.label) > 100:
        raise CommandError("--label must be at most 100 characters")
    engine = await open_ledger(load(args))
    try:
        async with engine.begin() as conn:
            info, token = await create_token(conn, args.store, args.role, args.label)
    finally:
        await engine.dispose()
    print(f"token {info.id} for store {info.store_id}, role {info.role}; shown only this once:")
    print(token)
    return 0


async def _list(args: argparse.Namespace) -> int:
    engine = await open_ledger(load(args))
    try:
        async with engine.connect() as conn:
            tokens = await list_tokens(conn, args.store)
    finally:
        await engine.dispose()
    print("id\tstore\trole\tcreated\tlast used\trevoked\tlabel")
    for t in tokens:
        print(
            "\t".join(
                [
                    t.id,
                    t.store_id,
                    t.role,
                    t.created_at.isoformat(timespec="seconds"),
                    t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "-",
                    t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-",
                    t.label or "",
                ]
            )
        )
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    engine = await open_ledger(load(args))
    try:
        async with engine.begin() as conn:
            revoked = await revoke_token(conn, args.id)
    finally:
        await engine.dispose()
    if not revoked:
        raise CommandError(f"no live token {args.id}")
    print(f"token {args.id} revoked")
    return 0
