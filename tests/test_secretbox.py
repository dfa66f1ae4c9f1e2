"""Secrets at rest: sealing, tamper and swap detection, key handling, API token helpers."""

from __future__ import annotations

import base64
import hashlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.secretbox import SecretBox, SecretBoxError, hash_token, new_token

KEY = bytes(range(32))
CARD_CONTEXT = b"boltcards.k2:card-1"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KEY)


def test_sealed_secret_opens_to_the_original(box):
    token = box.seal(b"\x00card key\xff", context=CARD_CONTEXT)

    assert token.startswith("v1:")
    assert box.open(token, context=CARD_CONTEXT) == b"\x00card key\xff"


def test_sealed_text_round_trips(box):
    assert box.open_text(box.seal_text("whsec ✓")) == "whsec ✓"


def test_sealing_twice_gives_different_tokens(box):
    assert box.seal(b"same") != box.seal(b"same")


def test_token_does_not_contain_the_plaintext(box):
    secret = b"f4b404be700ab285e333e32348fa3d3b"

    token = box.seal(secret)

    assert secret.decode() not in token
    assert base64.urlsafe_b64encode(secret).decode()[:20] not in token


def test_secret_moved_to_another_row_does_not_open(box):
    token = box.seal(b"k2", context=b"boltcards.k2:card-1")

    with pytest.raises(SecretBoxError, match="authentication"):
        box.open(token, context=b"boltcards.k2:card-2")
    with pytest.raises(SecretBoxError):
        box.open(token)


def test_wrong_master_key_is_rejected(box):
    token = box.seal(b"k2")

    with pytest.raises(SecretBoxError):
        SecretBox(bytes(32)).open(token)


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=64), position=st.integers(min_value=0), bit=st.integers(0, 5))
def test_any_altered_character_is_rejected(plaintext, position, bit):
    box = SecretBox(KEY)
    token = box.seal(plaintext)
    body = token[3:]
    index = position % len(body)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(body[index]) ^ (1 << bit)) % 64]
    tampered = "v1:" + body[:index] + replacement + body[index + 1 :]

    with pytest.raises(SecretBoxError):
        box.open(tampered)


@pytest.mark.parametrize("length", [0, 1, 3, 4, 33])
def test_token_with_altered_unused_trailing_bits_is_rejected(box, length):
    # Plain base64 decoding ignores the last character's spare bits; the box must not.
    token = box.seal(b"k" * length)
    body = token[3:]
    spare_bits = 6 * len(body) - 8 * len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert spare_bits > 0
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = body[:-1] + alphabet[alphabet.index(body[-1]) ^ 1]

    with pytest.raises(SecretBoxError, match="canonical"):
        box.open("v1:" + twin)


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=256), context=st.binary(max_size=64))
def test_any_secret_round_trips_in_its_context(plaintext, context):
    box = SecretBox(KEY)

    assert box.open(box.seal(plaintext, context=context), context=context) == plaintext


@pytest.mark.parametrize(
    "token",
    ["", "v1:", "v1:!!!!", "v2:AAAA", "plain text", "v1:" + "A" * 10, None, b"v1:AAAA"],
)
def test_malformed_tokens_are_rejected(box, token):
    with pytest.raises(SecretBoxError):
        box.open(token)


def test_repr_and_str_never_show_the_key(box):
    for text in (repr(box), str(box), f"{box}", repr([box])):
        assert KEY.hex() not in text
        assert base64.b64encode(KEY).decode() not in text
        assert "hidden" in text


def test_box_cannot_be_pickled(box):
    with pytest.raises(TypeError):
        pickle.dumps(box)


def test_master_key_is_read_from_hex_or_base64():
    token = SecretBox(KEY).seal(b"x")

    for text in (
        KEY.hex(),
        KEY.hex().upper(),
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        base64.b64encode(KEY).decode(),
        f"  {KEY.hex()}\n",
    ):
        assert SecretBox.from_text(text).open(token) == b"x"


@pytest.mark.parametrize(
    "text",
    ["", "abc", "00" * 31, "00" * 33, "zz" * 32, base64.b64encode(bytes(16)).decode(), None],
)
def test_master_key_text_of_the_wrong_shape_is_refused_with_a_hint(text):
    with pytest.raises(ValueError, match="64 hex characters or base64 of 32 bytes"):
        SecretBox.from_text(text)


def test_master_key_bytes_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(bytes(16))


def test_generated_key_text_is_accepted_and_random():
    first, second = SecretBox.generate_key_text(), SecretBox.generate_key_text()

    assert first != second
    SecretBox.from_text(first)


def test_api_token_hash_is_sha256_hex_and_tokens_are_fresh():
    token = new_token()

    assert len(token) >= 43
    assert token != new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in hash_token(token)


def test_fingerprint_is_stable_per_key_and_purpose_and_hides_the_value(box):
    uid = bytes.fromhex("04996c6a926980")

    first = box.fingerprint(uid, purpose=b"card-uid")

    assert first == SecretBox(KEY).fingerprint(uid, purpose=b"card-uid")
    assert first != box.fingerprint(uid, purpose=b"card-k1")
    assert first != SecretBox(bytes(32)).fingerprint(uid, purpose=b"card-uid")
    assert first != box.fingerprint(bytes.fromhex("04996c6a926981"), purpose=b"card-uid")
    assert uid.hex() not in first
    assert len(first) == 64
