"""2,000 random and malformed requests to the tap and callback: never a 5xx, always LUD-03 JSON.

Seeded, so a failure reproduces; the inputs mix pure noise with near misses (right lengths,
flipped characters, a real card's tap, invoices for the wrong network) that reach deeper checks.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_flow import (
    REAL_TAPS,
    Setup,
    import_real_card,
    invoice,
    issue_card,
    running_gateway,
    tap_of,
)
from yarl import URL

from ledger.schema import CardTap

SEED = 20261128
REQUESTS = 2000


@pytest.fixture
async def gw(engine: AsyncEngine, master_key_hex: str) -> AsyncIterator[Setup]:
    async for setup in running_gateway(engine, master_key_hex):
        yield setup


def noise(rng: random.Random, max_len: int = 80) -> str:
    alphabet = rng.choice(
        [
            string.hexdigits,
            string.printable,
            "".join(chr(c) for c in range(0x20, 0x2FF)),
            "%&=+?#;/\\\x00\n",
        ]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(chars) + 1)
        if op < 0.4 and chars:
            chars[min(i, len(chars) - 1)] = rng.choice(string.hexdigits + "gz-_ ")
        elif op < 0.7:
            chars.insert(i, rng.choice(string.hexdigits))
        elif chars:
            del chars[min(i, len(chars) - 1)]
    return "".join(chars)


def raw_query(rng: random.Random, pairs: list[tuple[str, str]]) -> str:
    parts = []
    for key, value in pairs:
        if rng.random() < 0.15:
            # Hand-made encodings: broken percent escapes, raw separators, repeated keys (only
            # what an HTTP request line may carry: anything else never reaches an application).
            safe = "%&=;+/?,:@!$'()*"
            parts.append(f"{quote(key, safe=safe)}={quote(value, safe=safe)}")
        else:
            parts.append(f"{quote(key)}={quote(value, safe='')}")
    return "&".join(parts)


def tap_query(rng: random.Random, fresh: Iterator[tuple[str, str]]) -> str:
    p, c, _ = rng.choice(REAL_TAPS)
    kind = rng.random()
    if kind < 0.1:
        pairs = list(zip(("p", "c"), next(fresh), strict=True))  # a good tap: reaches callbacks
    elif kind < 0.2:
        pairs = [("p", noise(rng, 40)), ("c", noise(rng, 20))]
    elif kind < 0.45:
        pairs = [("p", mutate(rng, p)), ("c", mutate(rng, c))]
    elif kind < 0.6:
        pairs = [("p", "".join(rng.choice("0123456789abcdef") for _ in range(32))), ("c", c)]
    elif kind < 0.7:
        pairs = [("p", p), ("c", c)]  # the real card: one accepted per counter, then replays
    elif kind < 0.8:
        pairs = [("p", p)] + [("c", noise(rng, 16)) for _ in range(rng.randint(0, 3))]
    elif kind < 0.9:
        pairs = [("p", "A" * rng.choice([0, 1, 31, 33, 4096])), ("c", c * rng.randint(0, 3))]
    else:
        pairs = [(noise(rng, 5), noise(rng, 30)) for _ in range(rng.randint(0, 4))]
    return raw_query(rng, pairs)


def callback_query(rng: random.Random, k1s: list[str], invoices: list[str]) -> str:
    kind = rng.random()
    k1 = (
        rng.choice(k1s)
        if k1s and rng.random() < 0.5
        else "".join(
            rng.choice("0123456789abcdefABCDEF")
            for _ in range(rng.choice([0, 10, 63, 64, 65, 128]))
        )
    )
    if kind < 0.25:
        pr = noise(rng, 300)
    elif kind < 0.5:
        pr = mutate(rng, rng.choice(invoices))
    elif kind < 0.7:
        pr = rng.choice(invoices)
    elif kind < 0.8:
        pr = "lightning:" + rng.choice(invoices).upper()
    else:
        pr = "lnbcrt" + noise(rng, 200)
    pairs = [("k1", k1), ("pr", pr)]
    rng.shuffle(pairs)
    if rng.random() < 0.1:
        pairs = pairs[: rng.randint(0, 1)]
    return raw_query(rng, pairs)


def is_lud03(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    if body.get("status") == "ERROR":
        return isinstance(body.get("reason"), str) and body["reason"] != ""
    if body.get("status") == "OK":
        return True
    return body.get("tag") == "withdrawRequest" and {
        "callback",
        "k1",
        "minWithdrawable",
        "maxWithdrawable",
        "defaultDescription",
    } <= set(body)


async def test_random_and_malformed_inputs_never_give_5xx_and_always_lud03_json(
    gw: Setup,
) -> None:
    rng = random.Random(SEED)
    await import_real_card(gw)
    issued = await issue_card(gw)
    fresh = (tap_of(issued["programmer"], "04112233445566", n) for n in itertools.count(1))
    invoices = [invoice(rng.randint(1, 200)) for _ in range(4)]
    invoices += [invoice(50, network="bc"), invoice(60, network="tb")]
    k1s: list[str] = []
    statuses: dict[int, int] = {}
    answers: dict[str, int] = {"withdrawRequest": 0, "OK": 0, "ERROR": 0}
    skipped = 0
    for n in range(REQUESTS):
        roll = rng.random()
        if roll < 0.47:
            path = "/boltcard?" + tap_query(rng, fresh)
        elif roll < 0.94:
            path = "/boltcard/callback?" + callback_query(rng, k1s, invoices)
        else:
            path = rng.choice(["/boltcard/", "/boltcard/callback/x", "/boltcard?", "/boltcardx"])
        method = "GET" if rng.random() < 0.95 else rng.choice(["POST", "PUT", "DELETE"])
        async with gw.client.session.request(
            method, URL(str(gw.client.make_url("/")).rstrip("/") + path, encoded=True)
        ) as resp:
            text = await resp.text()
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        assert resp.status < 500, (n, path, text)
        if path.startswith("/boltcardx"):
            skipped += 1
            continue  # not the gateway's path: aiohttp's own 404
        body = json.loads(text)
        assert is_lud03(body), (n, path, body)
        answers[body.get("tag") or body["status"]] += 1
        if body.get("tag") == "withdrawRequest":
            k1s.append(body["k1"])
    assert statuses.get(200, 0) > REQUESTS * 0.8
    assert sum(answers.values()) == REQUESTS - skipped
    # The near misses reached every stage: withdraw requests, and paid callbacks.
    assert answers["withdrawRequest"] > 50 and answers["OK"] > 0, answers
    # Every tap that reached the tap handler left a row.
    assert await gw.scalar(select(func.count()).select_from(CardTap)) > REQUESTS * 0.3
