"""Encryption of secrets at rest (card keys, webhook secrets) and hashing of API tokens.

A sealed value is a text token ``v1:<urlsafe base64 of nonce || ciphertext || tag>`` made with
AES-256-GCM under one master key. The caller's ``context`` (for example the table, column and row
id) is authenticated with it, so a token copied onto another row does not open there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string
from collections.abc import Mapping

from Crypto.Cipher import AES

KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_VERSION = "v1"
_PREFIX = _VERSION + ":"
_HEX_DIGITS = frozenset(string.hexdigits)


class SecretBoxError(Exception):
    """A sealed token is malformed, was altered, or belongs to another key or context."""


def _b64decode(text: str) -> bytes:
    """Strict base64 in either alphabet, padding optional."""
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    return base64.b64decode(normalized, validate=True)


def parse_master_key(text: str) -> bytes:
    """A master key given as 64 hex characters or base64 (url-safe or not) of 32 bytes."""
    value = (text or "").strip()
    if len(value) == 2 * KEY_LEN and _HEX_DIGITS.issuperset(value):
        return bytes.fromhex(value)
    try:
        key = _b64decode(value)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_LEN:
        raise ValueError(
            "the master key must be 64 hex characters or base64 of 32 bytes "
            "(generate one with SecretBox.generate_key_text())"
        )
    return key


class SecretBox:
    """Seals and opens small secrets with one 32-byte master key.

    Keyed fingerprints use a key per purpose, derived from the master key, unless
    ``fingerprint_keys`` gives them: a ledger whose master key was rotated keeps the
    fingerprint keys of its first master key (see ``flash_payouts.keys``), because a
    fingerprint cannot be recomputed once the value it was made from is erased.
    """

    __slots__ = ("_fingerprint_keys", "_key")

    def __init__(
        self, master_key: bytes, *, fingerprint_keys: Mapping[bytes, bytes] | None = None
    ) -> None:
        if not isinstance(master_key, bytes | bytearray) or len(master_key) != KEY_LEN:
            raise ValueError(f"the master key must be exactly {KEY_LEN} bytes")
        self._key = bytes(master_key)
        self._fingerprint_keys = dict(fingerprint_keys) if fingerprint_keys is not None else None

    def with_fingerprint_keys(self, keys: Mapping[bytes, bytes]) -> SecretBox:
        """This master key, fingerprinting with ``keys`` (purpose to key)."""
        return SecretBox(self._key, fingerprint_keys=keys)

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        """Read a master key given as 64 hex characters or base64 (url-safe or not) of 32 bytes."""
        return cls(parse_master_key(text))

    @staticmethod
    def generate_key_text() -> str:
        """A new random master key as 64 hex characters."""
        return secrets.token_hex(KEY_LEN)

    def _aad(self, context: bytes) -> bytes:
        # The version is authenticated too, so a future format cannot be confused with this one.
        return _VERSION.encode() + b"\x00" + bytes(context)

    def seal(self, plaintext: bytes, *, context: bytes = b"") -> str:
        nonce = secrets.token_bytes(_NONCE_LEN)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_LEN)
        cipher.update(self._aad(context))
        ciphertext, tag = cipher.encrypt_and_digest(bytes(plaintext))
        payload = base64.urlsafe_b64encode(nonce + ciphertext + tag).rstrip(b"=")
        return _PREFIX + payload.decode("ascii")

    def open(self, token: str, *, context: bytes = b"") -> bytes:
        if not isinstance(token, str) or not token.startswith(_PREFIX):
            raise SecretBoxError("not a sealed secret of a known version")
        body = token[len(_PREFIX) :]
        try:
            raw = _b64decode(body)
        except (binascii.Error, ValueError):
            raise SecretBoxError("sealed secret is not valid base64") from None
        # Base64 decoders ignore the unused low bits of the last character; insisting on the
        # one canonical spelling keeps every token for a ciphertext byte-for-byte unique.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
            raise SecretBoxError("sealed secret is not in canonical form")
        if len(raw) < _NONCE_LEN + _TAG_LEN:
            raise SecretBoxError("sealed secret is truncated")
        nonce, ciphertext, tag = raw[:_NONCE_LEN], raw[_NONCE_LEN:-_TAG_LEN], raw[-_TAG_LEN:]
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG_LEN)
        cipher.update(self._aad(context))
        try:
            return cipher.decrypt_and_verify(ciphertext, tag)
        except ValueError:
            raise SecretBoxError(
                "sealed secret failed authentication (altered, other key or other context)"
            ) from None

    def seal_text(self, plaintext: str, *, context: bytes = b"") -> str:
        return self.seal(plaintext.encode("utf-8"), context=context)

    def open_text(self, token: str, *, context: bytes = b"") -> str:
        return self.open(token, context=context).decode("utf-8")

    def fingerprint(self, data: bytes, *, purpose: bytes) -> str:
        """A keyed, non-reversible identifier of ``data`` (HMAC-SHA256 under a per-purpose key).

        Used where a secret or personal value must be found by index without being stored:
        a card's UID (tap lookup), a card's K1 (which cards share it).
        """
        return hmac.new(self.fingerprint_key(purpose), bytes(data), hashlib.sha256).hexdigest()

    def fingerprint_key(self, purpose: bytes) -> bytes:
        """The key of one fingerprint purpose (to carry it over to a new master key)."""
        if self._fingerprint_keys is None:
            return hmac.new(self._key, b"flash-fingerprint\x00" + purpose, hashlib.sha256).digest()
        try:
            return self._fingerprint_keys[purpose]
        except KeyError:
            raise ValueError(f"no fingerprint key for purpose {purpose!r}") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        # Pickling would write the key out in the clear.
        raise TypeError("SecretBox cannot be pickled")


def hash_token(token: str) -> str:
    """SHA-256 hex of an API token: what is stored and compared, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh API token: 32 random bytes, url-safe text."""
    return secrets.token_urlsafe(32)
