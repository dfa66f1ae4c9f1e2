"""The card registry: issuing, importing and managing Boltcards, and the gateway's key ring.

Card keys are sealed with the SecretBox under a context naming the card, so sealed keys copied
onto another card's row do not open. Issued cards get deterministic keys from their store's
issuer key (created on first use, sealed in ``stores.issuer_key_sealed``) or random ones.
Nothing here ever logs a key; listings show a card's facts, never its keys.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from Crypto.Cipher import AES
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import cards as ledger_cards
from ledger.cards import CardExists, CardRow
from ledger.secretbox import SecretBox
from ledger.stores import get_store, upsert_store

from .boltcard import (
    KEY_LEN,
    MAX_COUNTER,
    P_LEN,
    PICC_DATA_TAG,
    UID_LEN,
    CardKeys,
    PiccData,
    card_id,
    create_bolt_card_response,
    derive_card_keys,
    generate_keys,
)

# Least seconds between two loads of new card keys prompted by taps no known key reads: what
# such a tap may wait, and what bounds the queries a flood of unreadable taps can cause.
REFRESH_INTERVAL = 0.1
ISSUED = "issued"
IMPORTED = "imported"
_KEY_NAMES = ("k0", "k1", "k2", "k3", "k4")


class RegistryError(Exception):
    """A registry request that cannot be done; the message is one line for the operator."""


@dataclass(frozen=True)
class SealedKeys:
    """A card's keys as far as they are known (imported cards may lack K0, K3, K4)."""

    k0: bytes | None = field(default=None, repr=False)
    k1: bytes | None = field(default=None, repr=False)
    k2: bytes | None = field(default=None, repr=False)
    k3: bytes | None = field(default=None, repr=False)
    k4: bytes | None = field(default=None, repr=False)

    def hex(self) -> dict[str, str | None]:
        return {name: (v.hex() if v is not None else None) for name, v in self._items()}

    def _items(self) -> list[tuple[str, bytes | None]]:
        return [(name, getattr(self, name)) for name in _KEY_NAMES]


def uid_hash(box: SecretBox, uid: bytes) -> str:
    return box.fingerprint(uid, purpose=b"uid")


def k1_fingerprint(box: SecretBox, k1: bytes) -> str:
    return box.fingerprint(k1, purpose=b"k1")


def keys_context(card: str) -> bytes:
    return b"boltcards.keys_sealed:" + card.encode()


def issuer_context(store_id: str) -> bytes:
    return b"stores.issuer_key_sealed:" + store_id.encode()


def seal_keys(box: SecretBox, card: str, keys: SealedKeys) -> str:
    return box.seal_text(json.dumps(keys.hex(), sort_keys=True), context=keys_context(card))


def open_keys(box: SecretBox, card: CardRow) -> SealedKeys:
    if card.keys_sealed is None:
        return SealedKeys()
    raw = json.loads(box.open_text(card.keys_sealed, context=keys_context(card.id)))
    return SealedKeys(**{n: bytes.fromhex(raw[n]) if raw.get(n) else None for n in _KEY_NAMES})


def _hex_bytes(value: str, nbytes: int, what: str) -> bytes:
    text = (value or "").strip()
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise RegistryError(f"{what} is not hexadecimal") from None
    if len(data) != nbytes or len(text) != 2 * nbytes:
        raise RegistryError(f"{what} must be {2 * nbytes} hex characters")
    return data


def _limit(value: int | None, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or value < 0):
        raise RegistryError(f"{what} must be a non-negative number of sats")
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def card_json(card: CardRow) -> dict[str, Any]:
    """A card's facts for listings and the command line: never its keys."""
    return {
        "id": card.id,
        "store": card.store_id,
        "pull_payment": card.pull_payment_id,
        "origin": card.origin,
        "uid": card.uid,
        "alias": card.alias,
        "key_version": card.key_version,
        "enabled": card.enabled,
        "wiped": card.wiped_at is not None,
        "tx_limit_sats": card.tx_limit_sats,
        "day_limit_sats": card.day_limit_sats,
        "last_counter": card.last_counter if card.last_counter >= 0 else None,
        "first_used_at": _iso(card.first_used_at),
        "last_used_at": _iso(card.last_used_at),
        "last_payout_at": _iso(card.last_payout_at),
        "wiped_at": _iso(card.wiped_at),
        "created_at": _iso(card.created_at),
    }


class KeyRing:
    """Every distinct K1 the gateway knows, to read ``p`` before knowing the card.

    Cards issued here share their store's issuer K1; imported cards bring their own. A tap is
    decrypted with each K1 (one AES block, about a microsecond with the cipher objects kept),
    and those giving the 0xC7 tag are looked up by (UID hash, K1 fingerprint) in the index.
    The ring only grows: wiped cards keep their K1 so their taps are refused as wiped.
    """

    def __init__(self, box: SecretBox, *, refresh_interval: float = REFRESH_INTERVAL) -> None:
        self._box = box
        self._ciphers: dict[str, Any] = {}
        self._since: datetime | None = None
        self._refresh_lock = asyncio.Lock()
        self._refresh_started = -math.inf
        self.refresh_interval = refresh_interval

    def __len__(self) -> int:
        return len(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing({len(self)} keys)"

    def add(self, k1: bytes) -> None:
        self._ciphers.setdefault(k1_fingerprint(self._box, k1), AES.new(k1, AES.MODE_ECB))

    async def load(self, conn: AsyncConnection) -> None:
        """Learn the K1s of cards changed since the last load (all of them the first time)."""
        since = self._since
        rows = await ledger_cards.k1_holders(conn, changed_since=since)
        newest = since
        for fingerprint, card, sealed, updated_at in rows:
            if newest is None or updated_at > newest:
                newest = updated_at
            if fingerprint in self._ciphers:
                continue
            raw = json.loads(self._box.open_text(sealed, context=keys_context(card)))
            self._ciphers[fingerprint] = AES.new(bytes.fromhex(raw["k1"]), AES.MODE_ECB)
        # A transaction committing late may carry an older updated_at: look back a minute.
        if newest is not None:
            self._since = newest - timedelta(seconds=60)

    async def refresh(self, engine: AsyncEngine, *, asked_at: float) -> None:
        """Learn the K1s of cards added since the last load, by a load that starts after
        ``asked_at`` (``time.monotonic()``): a card committed before a tap arrived is then
        known to it, whichever process added the card.

        Taps no key reads wait for the same load, and loads start at least
        ``refresh_interval`` apart, so a flood of unreadable taps costs the database one small
        indexed query per interval, and each such tap at most that long.
        """
        async with self._refresh_lock:
            if self._refresh_started >= asked_at:
                return  # a load that started after the caller asked has finished meanwhile
            wait = self._refresh_started + self.refresh_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._refresh_started = time.monotonic()
            async with engine.connect() as conn:
                await self.load(conn)

    def candidates(self, p: bytes) -> list[tuple[str, PiccData]]:
        """(K1 fingerprint, UID and counter) for every K1 under which ``p`` carries the tag."""
        if len(p) != P_LEN:
            return []
        found = []
        for fingerprint, cipher in self._ciphers.items():
            plain = cipher.decrypt(p)
            if plain[0] == PICC_DATA_TAG:
                found.append(
                    (fingerprint, PiccData(plain[1:8], int.from_bytes(plain[8:11], "little")))
                )
        return found


class CardRegistry:
    """Adds, imports and manages cards; one instance per process (it owns the key ring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        *,
        lnurlw_base: str,
        default_tx_limit_sats: int | None = None,
        default_day_limit_sats: int | None = None,
        ring: KeyRing | None = None,
    ) -> None:
        self.engine = engine
        self.box = box
        self.lnurlw_base = lnurlw_base
        self.default_tx_limit_sats = default_tx_limit_sats
        self.default_day_limit_sats = default_day_limit_sats
        self.ring = ring or KeyRing(box)

    def __repr__(self) -> str:
        return f"CardRegistry(lnurlw_base={self.lnurlw_base!r})"

    # --- issuer keys ------------------------------------------------------------------------

    async def _ensure_store(self, conn: AsyncConnection, store_id: str) -> None:
        if not store_id or len(store_id) > 64:
            raise RegistryError("a store id of 1 to 64 characters is needed")
        if await get_store(conn, store_id) is None:
            await upsert_store(conn, store_id)

    async def _issuer_key(self, conn: AsyncConnection, store_id: str) -> bytes:
        store = await get_store(conn, store_id)
        assert store is not None
        if store.issuer_key_sealed is None:
            sealed = self.box.seal(os.urandom(KEY_LEN), context=issuer_context(store_id))
            await ledger_cards.set_issuer_key_if_absent(conn, store_id, sealed)
            store = await get_store(conn, store_id)
            assert store is not None and store.issuer_key_sealed is not None
        return self.box.open(store.issuer_key_sealed, context=issuer_context(store_id))

    async def set_issuer_key(self, store_id: str, issuer_key_hex: str) -> None:
        """Give a store a known issuer key (to re-create cards programmed elsewhere)."""
        key = _hex_bytes(issuer_key_hex, KEY_LEN, "issuer key")
        async with self.engine.begin() as conn:
            await self._ensure_store(conn, store_id)
            sealed = self.box.seal(key, context=issuer_context(store_id))
            if not await ledger_cards.set_issuer_key_if_absent(conn, store_id, sealed):
                raise RegistryError(f"store {store_id} already has an issuer key")

    # --- adding cards -------------------------------------------------------------------------

    async def add_card(
        self,
        store_id: str,
        *,
        pull_payment_id: str,
        uid: str,
        alias: str | None = None,
        tx_limit_sats: int | None = None,
        day_limit_sats: int | None = None,
        random_keys: bool = False,
    ) -> dict[str, Any]:
        """Issue a card (or re-program a wiped one under the next key version).

        Returns ``{"card": ..., "programmer": create_bolt_card_response}``.
        """
        uid_bytes = _hex_bytes(uid, UID_LEN, "UID")
        if not pull_payment_id:
            raise RegistryError("a pull payment id is needed")
        _limit(tx_limit_sats, "transaction limit")
        _limit(day_limit_sats, "day limit")
        async with self.engine.begin() as conn:
            await self._ensure_store(conn, store_id)
            issuer = await self._issuer_key(conn, store_id)
            existing = await ledger_cards.find_cards_by_uid_hash(
                conn, store_id, uid_hash(self.box, uid_bytes)
            )
            if existing:
                card = existing[0]
                if card.wiped_at is None:
                    raise RegistryError(
                        f"card {card.id} with this UID is already registered; "
                        "wipe it before programming it again"
                    )
                version = card.key_version + 1
                keys = self._new_keys(issuer, uid_bytes, version, random_keys)
                row = await ledger_cards.reprogram(
                    conn,
                    card.id,
                    expected_version=card.key_version,
                    keys_sealed=seal_keys(self.box, card.id, _sealed(keys)),
                    k1_fingerprint=k1_fingerprint(self.box, keys.k1),
                    pull_payment_id=pull_payment_id,
                )
                if row is None:
                    raise RegistryError(f"card {card.id} changed meanwhile; try again")
                if alias is not None or tx_limit_sats is not None or day_limit_sats is not None:
                    await ledger_cards.set_alias(conn, card.id, alias if alias else row.alias)
                    row = await ledger_cards.set_limits(
                        conn, card.id, tx_limit_sats=tx_limit_sats, day_limit_sats=day_limit_sats
                    )
                    assert row is not None
            else:
                keys = self._new_keys(issuer, uid_bytes, 1, random_keys)
                try:
                    row = await ledger_cards.insert_card(
                        conn,
                        card_id=keys.card_id,
                        store_id=store_id,
                        pull_payment_id=pull_payment_id,
                        origin=ISSUED,
                        uid=uid_bytes.hex(),
                        uid_hash=uid_hash(self.box, uid_bytes),
                        keys_sealed=seal_keys(self.box, keys.card_id, _sealed(keys)),
                        k1_fingerprint=k1_fingerprint(self.box, keys.k1),
                        alias=alias,
                        tx_limit_sats=_default(tx_limit_sats, self.default_tx_limit_sats),
                        day_limit_sats=_default(day_limit_sats, self.default_day_limit_sats),
                    )
                except CardExists:
                    raise RegistryError(f"card {keys.card_id} is already registered") from None
        self.ring.add(keys.k1)
        name = row.alias or f"card {row.id[:8]}"
        return {
            "card": card_json(row),
            "programmer": create_bolt_card_response(name, self.lnurlw_base, keys),
        }

    @staticmethod
    def _new_keys(issuer: bytes, uid: bytes, version: int, random_keys: bool) -> CardKeys:
        if not random_keys:
            return derive_card_keys(issuer, uid, version)
        fresh = generate_keys(version)
        # A card with random keys still gets its issuer-derived id: stable across re-programming.
        return CardKeys(
            k0=fresh.k0,
            k1=fresh.k1,
            k2=fresh.k2,
            k3=fresh.k3,
            k4=fresh.k4,
            card_id=card_id(issuer, uid),
            version=version,
        )

    async def import_card(
        self,
        store_id: str,
        *,
        pull_payment_id: str,
        uid: str,
        k1: str,
        k2: str,
        k0: str | None = None,
        k3: str | None = None,
        k4: str | None = None,
        counter: int | None = None,
        alias: str | None = None,
        tx_limit_sats: int | None = None,
        day_limit_sats: int | None = None,
    ) -> dict[str, Any]:
        """Register a card programmed elsewhere, with the keys given."""
        uid_bytes = _hex_bytes(uid, UID_LEN, "UID")
        keys = SealedKeys(
            k0=_hex_bytes(k0, KEY_LEN, "K0") if k0 else None,
            k1=_hex_bytes(k1, KEY_LEN, "K1"),
            k2=_hex_bytes(k2, KEY_LEN, "K2"),
            k3=_hex_bytes(k3, KEY_LEN, "K3") if k3 else None,
            k4=_hex_bytes(k4, KEY_LEN, "K4") if k4 else None,
        )
        if not pull_payment_id:
            raise RegistryError("a pull payment id is needed")
        if counter is not None and not 0 <= counter <= MAX_COUNTER:
            raise RegistryError(f"counter must be within 0..{MAX_COUNTER}")
        _limit(tx_limit_sats, "transaction limit")
        _limit(day_limit_sats, "day limit")
        assert keys.k1 is not None
        fingerprint = k1_fingerprint(self.box, keys.k1)
        hashed_uid = uid_hash(self.box, uid_bytes)
        new_id = os.urandom(16).hex()
        async with self.engine.begin() as conn:
            await self._ensure_store(conn, store_id)
            clash = await ledger_cards.find_tap_cards(conn, [(hashed_uid, fingerprint)])
            if clash:
                raise RegistryError(
                    f"a card with this UID and K1 is already registered as {clash[0].id}"
                )
            row = await ledger_cards.insert_card(
                conn,
                card_id=new_id,
                store_id=store_id,
                pull_payment_id=pull_payment_id,
                origin=IMPORTED,
                uid=uid_bytes.hex(),
                uid_hash=hashed_uid,
                keys_sealed=seal_keys(self.box, new_id, keys),
                k1_fingerprint=fingerprint,
                alias=alias,
                last_counter=-1 if counter is None else counter,
                tx_limit_sats=_default(tx_limit_sats, self.default_tx_limit_sats),
                day_limit_sats=_default(day_limit_sats, self.default_day_limit_sats),
            )
        self.ring.add(keys.k1)
        return card_json(row)

    # --- managing cards -----------------------------------------------------------------------

    async def get(self, card: str) -> CardRow:
        async with self.engine.connect() as conn:
            row = await ledger_cards.get_card(conn, card)
        if row is None:
            raise RegistryError(f"no card {card}")
        return row

    async def show(self, card: str) -> dict[str, Any]:
        return card_json(await self.get(card))

    async def list(self, store_id: str | None = None) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await ledger_cards.list_cards(conn, store_id)
        return [card_json(r) for r in rows]

    async def _change(self, card: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            row = await fn(conn, card, *args, **kwargs)
        if row is None:
            raise RegistryError(f"no card {card}")
        return card_json(row)

    async def set_alias(self, card: str, alias: str | None) -> dict[str, Any]:
        if alias is not None and len(alias) > 100:
            raise RegistryError("an alias has at most 100 characters")
        return await self._change(card, ledger_cards.set_alias, alias or None)

    async def enable(self, card: str) -> dict[str, Any]:
        if (await self.get(card)).wiped_at is not None:
            raise RegistryError(f"card {card} is wiped; program it again with `cards add`")
        return await self._change(card, ledger_cards.set_enabled, True)

    async def disable(self, card: str) -> dict[str, Any]:
        return await self._change(card, ledger_cards.set_enabled, False)

    async def set_limits(
        self, card: str, *, tx_limit_sats: int | None = None, day_limit_sats: int | None = None
    ) -> dict[str, Any]:
        _limit(tx_limit_sats, "transaction limit")
        _limit(day_limit_sats, "day limit")
        return await self._change(
            card,
            ledger_cards.set_limits,
            tx_limit_sats=tx_limit_sats,
            day_limit_sats=day_limit_sats,
        )

    async def wipe(self, card: str) -> dict[str, Any]:
        """Mark a card wiped and return the keys a programming app needs to reset it.

        The answer is the programming apps' wipe document; it holds the card's keys, so it
        is for the operator's eyes only (never logged).
        """
        async with self.engine.begin() as conn:
            row = await ledger_cards.mark_wiped(conn, card)
        if row is None:
            raise RegistryError(f"no card {card}")
        keys = open_keys(self.box, row)
        return {
            "card": card_json(row),
            "wipe": {"version": row.key_version, "action": "wipe", **keys.hex()},
        }


def _sealed(keys: CardKeys) -> SealedKeys:
    return SealedKeys(k0=keys.k0, k1=keys.k1, k2=keys.k2, k3=keys.k3, k4=keys.k4)


def _default(value: int | None, default: int | None) -> int | None:
    return default if value is None else value
