"""`flash-payouts tokens`: a created token works against the API once, and not after revoke."""

from __future__ import annotations

import re

from api_fixtures import api_client

from flash_payouts.cli import main
from ledger.db import create_engine


async def run(capsys, *argv: str) -> tuple[int, str, str]:
    import asyncio

    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_created_token_reads_its_store_until_revoked(db_url, capsys, aiohttp_client):
    db = ["--database-url", db_url]
    code, out, _ = await run(capsys, "tokens", "create", "--store", "s1", "--role", "viewer", *db)
    assert code == 0
    token_id = re.search(r"token (\w+) for store s1", out)[1]
    token = out.strip().splitlines()[-1]

    code, listing, _ = await run(capsys, "tokens", "list", *db)
    assert token_id in listing and token not in listing

    engine = create_engine(db_url)
    try:
        client = await api_client(aiohttp_client, engine)
        headers = {"Authorization": f"Bearer {token}"}
        r = await client.get("/plugins/flash/api/payouts", headers=headers)
        assert r.status == 200 and (await r.json())["total"] == 0

        assert (await run(capsys, "tokens", "revoke", token_id, *db))[0] == 0
        r = await client.get("/plugins/flash/api/payouts", headers=headers)
        assert r.status == 401
        assert (await r.json())["code"] == "unauthorized"
    finally:
        await engine.dispose()

    code, _, err = await run(capsys, "tokens", "revoke", token_id, *db)
    assert code == 1 and "no live token" in err


async def test_unknown_role_is_refused(db_url, capsys):
    import pytest

    with pytest.raises(SystemExit):
        await run(capsys, "tokens", "create", "--store", "s1", "--role", "owner")
