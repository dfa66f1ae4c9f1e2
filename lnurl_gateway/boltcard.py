"""Boltcard (NTAG 424 DNA) card cryptography: SUN message decryption, MAC and key derivation.

Pure functions over bytes; nothing here knows HTTP or the database. The protocol facts follow
the Boltcard reference implementations and NXP AN12196:

- ``p`` is one AES-128 block encrypted with K1 (CBC, zero IV): ``C7 || UID(7) || counter(3, LE)
  || filler(5)``.
- ``c`` is the truncated SUN MAC under a session key derived from K2, UID and counter.
- Deterministic keys (boltcard DETERMINISTIC.md, as BTCPay Server uses them) come from one
  issuer key with AES-CMAC as the PRF.
"""

from __future__ import annotations

import hmac
import os
import string
from dataclasses import dataclass, field

from Crypto.Cipher import AES
from Crypto.Hash import CMAC

PICC_DATA_TAG = 0xC7
UID_LEN = 7
KEY_LEN = 16
P_LEN = 16
C_LEN = 8
FILLER_LEN = 5
MAX_COUNTER = 0xFFFFFF

_SV2_PREFIX = bytes.fromhex("3cc300010080")
_TAG_CARD_KEY = bytes.fromhex("2d003f75")
_TAG_K0 = bytes.fromhex("2d003f76")
_TAG_K1 = bytes.fromhex("2d003f77")
_TAG_K2 = bytes.fromhex("2d003f78")
_TAG_K3 = bytes.fromhex("2d003f79")
_TAG_K4 = bytes.fromhex("2d003f7a")
_TAG_CARD_ID = bytes.fromhex("2d003f7b")
_ZERO_IV = bytes(16)
_HEX_DIGITS = frozenset(string.hexdigits)


class CardCryptoError(ValueError):
    """A card message could not be read or authenticated."""


class BadP(CardCryptoError):
    """``p`` does not decrypt to Boltcard PICC data under the given K1."""


class BadC(CardCryptoError):
    """``c`` is not the card's MAC over the decrypted UID and counter."""


class BadParam(CardCryptoError):
    """A query parameter is not hex of the expected length."""


@dataclass(frozen=True)
class PiccData:
    """What the card put in ``p``: its UID and read counter."""

    uid: bytes
    counter: int

    @property
    def uid_hex(self) -> str:
        return self.uid.hex()


@dataclass(frozen=True)
class CardKeys:
    """The five application keys of a card and its public identifier.

    Keys are hidden from ``repr`` so a logged object never leaks them.
    """

    k0: bytes = field(repr=False)
    k1: bytes = field(repr=False)
    k2: bytes = field(repr=False)
    k3: bytes = field(repr=False)
    k4: bytes = field(repr=False)
    card_id: str
    version: int = 1

    def hex_keys(self) -> dict[str, str]:
        """Lower-case hex of k0..k4, the form the programming apps and BTCPay use."""
        return {
            "k0": self.k0.hex(),
            "k1": self.k1.hex(),
            "k2": self.k2.hex(),
            "k3": self.k3.hex(),
            "k4": self.k4.hex(),
        }


def _require_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _check_counter(counter: int) -> None:
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"counter must be within 0..{MAX_COUNTER}")


def _cmac(key: bytes, message: bytes) -> bytes:
    return CMAC.new(key, msg=message, ciphermod=AES).digest()


def parse_hex_param(value: str, nbytes: int, name: str = "value") -> bytes:
    """Read a hex query parameter of exactly ``nbytes`` bytes, either letter case."""
    if not isinstance(value, str) or not value:
        raise BadParam(f"{name} is missing")
    if len(value) != 2 * nbytes:
        raise BadParam(f"{name} must be {2 * nbytes} hex characters, got {len(value)}")
    # bytes.fromhex would accept embedded spaces, so check the alphabet first.
    if not _HEX_DIGITS.issuperset(value):
        raise BadParam(f"{name} is not hexadecimal")
    return bytes.fromhex(value)


def decrypt_p(p: bytes, k1: bytes) -> PiccData:
    """Decrypt ``p`` with K1 and return the UID and counter it carries."""
    _require_len("k1", k1, KEY_LEN)
    if len(p) != P_LEN:
        raise BadP(f"p must be {P_LEN} bytes")
    # One block under CBC with a zero IV is the same as ECB.
    plain = AES.new(bytes(k1), AES.MODE_ECB).decrypt(bytes(p))
    if plain[0] != PICC_DATA_TAG:
        raise BadP("p does not decrypt to Boltcard PICC data (wrong K1 or not a Boltcard)")
    uid = plain[1:8]
    counter = int.from_bytes(plain[8:11], "little")
    return PiccData(uid=uid, counter=counter)


def encrypt_p(k1: bytes, uid: bytes, counter: int, filler: bytes | None = None) -> bytes:
    """Build ``p`` as a card would; ``filler`` defaults to 5 random bytes like real cards."""
    _require_len("k1", k1, KEY_LEN)
    _require_len("uid", uid, UID_LEN)
    _check_counter(counter)
    if filler is None:
        filler = os.urandom(FILLER_LEN)
    _require_len("filler", filler, FILLER_LEN)
    plain = bytes([PICC_DATA_TAG]) + bytes(uid) + counter.to_bytes(3, "little") + bytes(filler)
    return AES.new(bytes(k1), AES.MODE_CBC, iv=_ZERO_IV).encrypt(plain)


def sun_mac(k2: bytes, uid: bytes, counter: int) -> bytes:
    """The 8-byte SUN MAC the card writes as ``c`` for this UID and counter."""
    _require_len("k2", k2, KEY_LEN)
    _require_len("uid", uid, UID_LEN)
    _check_counter(counter)
    sv2 = _SV2_PREFIX + bytes(uid) + counter.to_bytes(3, "little")
    session_key = _cmac(bytes(k2), sv2)
    full = _cmac(session_key, b"")
    # NTAG 424 truncates the MAC to its odd-indexed bytes (AN12196).
    return full[1::2]


def verify_c(c: bytes, k2: bytes, uid: bytes, counter: int) -> bool:
    """True when ``c`` is the card's MAC for this UID and counter; constant-time compare."""
    if len(c) != C_LEN:
        return False
    return hmac.compare_digest(sun_mac(k2, uid, counter), bytes(c))


def read_tap(p_hex: str, c_hex: str, k1: bytes, k2: bytes) -> PiccData:
    """Parse, decrypt and authenticate a tap when both keys are already known.

    Raises BadParam, BadP or BadC, each with its own reason.
    """
    p = parse_hex_param(p_hex, P_LEN, "p")
    c = parse_hex_param(c_hex, C_LEN, "c")
    picc = decrypt_p(p, k1)
    if not verify_c(c, k2, picc.uid, picc.counter):
        raise BadC("c does not match the card's MAC")
    return picc


def make_tap(k1: bytes, k2: bytes, uid: bytes, counter: int) -> tuple[str, str]:
    """Upper-case hex ``p`` and ``c`` as a card writes them in its NDEF URL."""
    p = encrypt_p(k1, uid, counter)
    c = sun_mac(k2, uid, counter)
    return p.hex().upper(), c.hex().upper()


def issuer_k1(issuer_key: bytes) -> bytes:
    """K1 shared by every card of an issuer: reads ``p`` before the card is known."""
    _require_len("issuer_key", issuer_key, KEY_LEN)
    return _cmac(bytes(issuer_key), _TAG_K1)


def card_id(issuer_key: bytes, uid: bytes) -> str:
    """The card's public identifier (BTCPay's boltcard id), lower-case hex."""
    _require_len("issuer_key", issuer_key, KEY_LEN)
    _require_len("uid", uid, UID_LEN)
    return _cmac(bytes(issuer_key), _TAG_CARD_ID + bytes(uid)).hex()


def derive_card_key(
    issuer_key: bytes, uid: bytes, version: int = 1, pull_payment_id: str | None = None
) -> bytes:
    """CardKey = PRF(IssuerKey, 2d003f75 || UID || version LE32 [|| utf8(pull payment id)]).

    BTCPay Server binds cards to a pull payment by appending the id's UTF-8 bytes.
    """
    _require_len("issuer_key", issuer_key, KEY_LEN)
    _require_len("uid", uid, UID_LEN)
    if not 0 <= version <= 0xFFFFFFFF:
        raise ValueError("version must fit in 32 bits")
    message = _TAG_CARD_KEY + bytes(uid) + version.to_bytes(4, "little")
    if pull_payment_id is not None:
        message += pull_payment_id.encode("utf-8")
    return _cmac(bytes(issuer_key), message)


def derive_card_keys(
    issuer_key: bytes, uid: bytes, version: int = 1, pull_payment_id: str | None = None
) -> CardKeys:
    """All keys of a deterministically provisioned card."""
    card_key = derive_card_key(issuer_key, uid, version, pull_payment_id)
    return CardKeys(
        k0=_cmac(card_key, _TAG_K0),
        k1=issuer_k1(issuer_key),
        k2=_cmac(card_key, _TAG_K2),
        k3=_cmac(card_key, _TAG_K3),
        k4=_cmac(card_key, _TAG_K4),
        card_id=card_id(issuer_key, uid),
        version=version,
    )


def generate_keys(version: int = 1) -> CardKeys:
    """Independent random keys for a card not derived from an issuer key.

    Such a card has no derivable identifier, so it gets a random one of the same shape.
    """
    return CardKeys(
        k0=os.urandom(KEY_LEN),
        k1=os.urandom(KEY_LEN),
        k2=os.urandom(KEY_LEN),
        k3=os.urandom(KEY_LEN),
        k4=os.urandom(KEY_LEN),
        card_id=os.urandom(16).hex(),
        version=version,
    )


def create_bolt_card_response(card_name: str, lnurlw_base: str, keys: CardKeys) -> dict:
    """The JSON document the Bolt Card programming apps read to write a card."""
    return {
        "protocol_name": "create_bolt_card_response",
        "protocol_version": 2,
        "card_name": card_name,
        "lnurlw_base": lnurlw_base,
        **keys.hex_keys(),
    }
