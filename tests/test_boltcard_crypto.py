"""Boltcard card crypto against public vectors and as properties over random cards."""

from __future__ import annotations

import pytest
from Crypto.Cipher import AES
from Crypto.Hash import CMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from lnurl_gateway.boltcard import (
    BadC,
    BadP,
    BadParam,
    CardCryptoError,
    PiccData,
    card_id,
    create_bolt_card_response,
    decrypt_p,
    derive_card_key,
    derive_card_keys,
    encrypt_p,
    generate_keys,
    issuer_k1,
    make_tap,
    parse_hex_param,
    read_tap,
    sun_mac,
    verify_c,
)

# A real card, published in the Boltcard test vectors.
REAL_K1 = bytes.fromhex("0c3b25d92b38ae443229dd59ad34b85d")
REAL_K2 = bytes.fromhex("b45775776cb224c75bcde7ca3704e933")
REAL_UID = bytes.fromhex("04996c6a926980")
REAL_TAPS = [
    ("4E2E289D945A66BB13377A728884E867", "E19CCB1FED8892CE", 3),
    ("00F48C4F8E386DED06BCDC78FA92E2FE", "66B4826EA4C155B4", 5),
    ("0DBF3C59B59B0638D60B5842A997D4D1", "CC61660C020B4D96", 7),
]

ISSUER_KEY = bytes.fromhex("00000000000000000000000000000001")
DERIVED_UID = bytes.fromhex("04a39493cc8680")

keys16 = st.binary(min_size=16, max_size=16)
uids = st.binary(min_size=7, max_size=7)
counters = st.integers(min_value=0, max_value=0xFFFFFF)
fillers = st.binary(min_size=5, max_size=5)


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize(("p_hex", "c_hex", "counter"), REAL_TAPS)
def test_real_card_taps_decrypt_to_uid_and_counter_and_their_mac_verifies(p_hex, c_hex, counter):
    picc = decrypt_p(bytes.fromhex(p_hex), REAL_K1)

    assert picc == PiccData(uid=REAL_UID, counter=counter)
    assert verify_c(bytes.fromhex(c_hex), REAL_K2, picc.uid, picc.counter)
    assert sun_mac(REAL_K2, picc.uid, picc.counter).hex().upper() == c_hex


def test_real_card_tap_reads_end_to_end_from_lower_case_hex():
    p_hex, c_hex, counter = REAL_TAPS[0]

    picc = read_tap(p_hex.lower(), c_hex.lower(), REAL_K1, REAL_K2)

    assert picc.uid_hex == "04996c6a926980"
    assert picc.counter == counter


def test_real_card_filler_is_not_zero_and_is_ignored():
    # A1 decrypts to c704996c6a926980030000023fb5f34a: the last five bytes are not zero.
    p_hex, _, _ = REAL_TAPS[0]
    reencrypted = encrypt_p(REAL_K1, REAL_UID, 3, filler=bytes.fromhex("023fb5f34a"))

    assert reencrypted.hex().upper() == p_hex


def test_nxp_an12196_sun_example_verifies():
    zero = bytes(16)

    picc = decrypt_p(bytes.fromhex("EF963FF7828658A599F3041510671E88"), zero)

    assert picc.uid == bytes.fromhex("04DE5F1EACC040")
    assert picc.counter == 61
    assert verify_c(bytes.fromhex("94EED9EE65337086"), zero, picc.uid, picc.counter)


def test_deterministic_keys_match_the_boltcard_vector():
    assert derive_card_key(ISSUER_KEY, DERIVED_UID, 1).hex() == "ebff5a4e6da5ee14cbfe720ae06fbed9"

    keys = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=1)

    assert keys.hex_keys() == {
        "k0": "a29119fcb48e737d1591d3489557e49b",
        "k1": "55da174c9608993dc27bb3f30a4a7314",
        "k2": "f4b404be700ab285e333e32348fa3d3b",
        "k3": "73610ba4afe45b55319691cb9489142f",
        "k4": "addd03e52964369be7f2967736b7bdb5",
    }
    assert keys.card_id == "e07ce1279d980ecb892a81924b67bf18"
    assert card_id(ISSUER_KEY, DERIVED_UID) == "e07ce1279d980ecb892a81924b67bf18"
    assert issuer_k1(ISSUER_KEY) == keys.k1


def test_pull_payment_binding_changes_card_keys_but_not_k1_or_card_id():
    plain = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=1)
    bound = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=1, pull_payment_id="3Tn9kVwYz")
    other = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=1, pull_payment_id="3Tn9kVwYy")

    assert bound.k1 == plain.k1
    assert bound.card_id == plain.card_id
    assert len({plain.k2, bound.k2, other.k2}) == 3
    assert len({plain.k0, bound.k0, other.k0}) == 3
    # BTCPay Server appends the id's UTF-8 bytes after the version in the CardKey input.
    message = bytes.fromhex("2d003f75") + DERIVED_UID + (1).to_bytes(4, "little") + b"3Tn9kVwYz"
    expected = CMAC.new(ISSUER_KEY, msg=message, ciphermod=AES).digest()
    assert derive_card_key(ISSUER_KEY, DERIVED_UID, 1, "3Tn9kVwYz") == expected


def test_new_key_version_invalidates_macs_of_the_old_one():
    v1 = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=1)
    v2 = derive_card_keys(ISSUER_KEY, DERIVED_UID, version=2)
    _, c_hex = make_tap(v1.k1, v1.k2, DERIVED_UID, 10)

    assert verify_c(bytes.fromhex(c_hex), v1.k2, DERIVED_UID, 10)
    assert not verify_c(bytes.fromhex(c_hex), v2.k2, DERIVED_UID, 10)


def test_p_that_does_not_decrypt_to_picc_data_is_rejected():
    with pytest.raises(BadP):
        decrypt_p(bytes.fromhex(REAL_TAPS[0][0]), bytes(16))
    with pytest.raises(BadP):
        decrypt_p(bytes(15), REAL_K1)


def test_tap_with_a_forged_mac_is_rejected_with_its_own_reason():
    p_hex, _, _ = REAL_TAPS[0]

    with pytest.raises(BadC):
        read_tap(p_hex, "00" * 8, REAL_K1, REAL_K2)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "missing"),
        ("ABC", "must be 16 hex characters"),
        ("ZZ" * 8, "not hexadecimal"),
        ("00 11 22 33 44 55", "must be 16"),
        ("0011223344556 77", "not hexadecimal"),
    ],
)
def test_malformed_hex_parameters_are_rejected_with_a_clear_reason(value, reason):
    with pytest.raises(BadParam, match=reason) as raised:
        parse_hex_param(value, 8, "c")
    assert isinstance(raised.value, CardCryptoError)


def test_hex_parameters_are_accepted_in_either_case():
    assert parse_hex_param("e19ccb1fed8892ce", 8) == parse_hex_param("E19CCB1FED8892CE", 8)


def test_card_keys_never_show_in_repr():
    keys = derive_card_keys(ISSUER_KEY, DERIVED_UID)

    text = repr(keys)

    for value in keys.hex_keys().values():
        assert value not in text
    assert keys.card_id in text


def test_programmer_app_document_has_the_expected_shape():
    keys = derive_card_keys(ISSUER_KEY, DERIVED_UID)

    document = create_bolt_card_response("Alice", "lnurlw://pay.example.com/boltcard", keys)

    assert document == {
        "protocol_name": "create_bolt_card_response",
        "protocol_version": 2,
        "card_name": "Alice",
        "lnurlw_base": "lnurlw://pay.example.com/boltcard",
        "k0": "a29119fcb48e737d1591d3489557e49b",
        "k1": "55da174c9608993dc27bb3f30a4a7314",
        "k2": "f4b404be700ab285e333e32348fa3d3b",
        "k3": "73610ba4afe45b55319691cb9489142f",
        "k4": "addd03e52964369be7f2967736b7bdb5",
    }


def test_generated_keys_are_independent_and_work_for_taps():
    first, second = generate_keys(), generate_keys()
    uid = bytes.fromhex("04112233445566")

    p_hex, c_hex = make_tap(first.k1, first.k2, uid, 1)

    assert first.hex_keys() != second.hex_keys()
    assert first.card_id != second.card_id
    assert read_tap(p_hex, c_hex, first.k1, first.k2) == PiccData(uid, 1)
    with pytest.raises(BadP):
        read_tap(p_hex, c_hex, second.k1, second.k2)


def test_counter_beyond_three_bytes_is_refused():
    with pytest.raises(ValueError):
        encrypt_p(REAL_K1, REAL_UID, 0x1000000)


@settings(max_examples=200, deadline=None)
@given(k1=keys16, k2=keys16, uid=uids, counter=counters, filler=fillers)
def test_a_card_generated_tap_decrypts_and_verifies(k1, k2, uid, counter, filler):
    p = encrypt_p(k1, uid, counter, filler)
    c = sun_mac(k2, uid, counter)

    picc = decrypt_p(p, k1)

    assert picc == PiccData(uid=uid, counter=counter)
    assert verify_c(c, k2, picc.uid, picc.counter)


@settings(max_examples=200, deadline=None)
@given(k1=keys16, k2=keys16, uid=uids, counter=counters, bit=st.integers(0, 127))
def test_any_flipped_bit_in_p_is_rejected(k1, k2, uid, counter, bit):
    p_hex, c_hex = make_tap(k1, k2, uid, counter)
    tampered = flip_bit(bytes.fromhex(p_hex), bit)

    # Either the block no longer decrypts to PICC data, or it names a UID/counter the MAC
    # does not cover: a tampered p never yields an accepted tap.
    with pytest.raises(CardCryptoError):
        read_tap(tampered.hex(), c_hex, k1, k2)


@settings(max_examples=200, deadline=None)
@given(k1=keys16, k2=keys16, uid=uids, counter=counters, bit=st.integers(0, 63))
def test_any_flipped_bit_in_c_is_rejected(k1, k2, uid, counter, bit):
    p_hex, c_hex = make_tap(k1, k2, uid, counter)
    tampered = flip_bit(bytes.fromhex(c_hex), bit)

    assert not verify_c(tampered, k2, uid, counter)
    with pytest.raises(BadC):
        read_tap(p_hex, tampered.hex(), k1, k2)


@settings(max_examples=200, deadline=None)
@given(k1=keys16, k2=keys16, wrong=keys16, uid=uids, counter=counters)
def test_wrong_keys_are_rejected(k1, k2, wrong, uid, counter):
    p_hex, c_hex = make_tap(k1, k2, uid, counter)

    if wrong != k2:
        with pytest.raises(BadC):
            read_tap(p_hex, c_hex, k1, wrong)
    if wrong != k1:
        with pytest.raises(CardCryptoError):
            read_tap(p_hex, c_hex, wrong, k2)


@settings(max_examples=200, deadline=None)
@given(k2=keys16, uid=uids, counter=counters, other=counters)
def test_mac_of_one_counter_does_not_verify_another(k2, uid, counter, other):
    c = sun_mac(k2, uid, counter)

    assert verify_c(c, k2, uid, other) == (other == counter)
