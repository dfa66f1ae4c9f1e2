"""BOLT11 decoding against the specification's examples, the bolt11 package, and garbage."""

from __future__ import annotations

import contextlib
import hashlib

import bolt11
import pytest
from bech32 import CHARSET, bech32_encode
from hypothesis import given, settings
from hypothesis import strategies as st

from lnurl_gateway.invoices import (
    InvoiceError,
    decode_invoice,
    encode_invoice,
    network_prefix,
    preimage_and_hash,
)

# Examples from the BOLT11 specification (signed by its published test key).
SPEC_COFFEE = (
    "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqq"
    "syqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkp"
    "mdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh"
)
SPEC_NONSENSE = (
    "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqq"
    "syqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpquwpc4curk03c9wlrswe78q4eyqc7d8d0xqzpu9qrsgqhtjpauu9ur7fw2t"
    "hcl4y9vfvh4m9wlfyz2gem29g5ghe2aak2pm3ps8fdhtceqsaagty2vph7utlgj48u0ged6a337aewvraedendscp573dxr"
)
SPEC_PAYEE = "03e7156ae33b0a208d0744199163177e909e80176e55d97a2f221ede0f934dd9ad"
SPEC_HASH = "0001020304050607080900010203040506070809000102030405060708090102"
NODE_KEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"


def test_specification_example_decodes_to_its_published_fields():
    invoice = decode_invoice(SPEC_COFFEE)

    assert invoice.payment_hash == SPEC_HASH
    assert invoice.amount_msat == 250_000_000
    assert invoice.timestamp == 1496314658
    assert invoice.expiry == 60
    assert invoice.expires_at == 1496314658 + 60
    assert invoice.network == "bc"
    assert invoice.network_name == "mainnet"
    assert invoice.description == "1 cup coffee"
    assert invoice.payee == SPEC_PAYEE
    assert invoice.payment_secret == "11" * 32


def test_specification_example_with_utf8_description_decodes():
    assert decode_invoice(SPEC_NONSENSE).description == "ナンセンス 1杯"


def test_old_invoice_is_reported_expired():
    invoice = decode_invoice(SPEC_COFFEE)

    assert invoice.is_expired()
    assert not invoice.is_expired(now=1496314658 + 59)
    assert invoice.is_expired(now=1496314658 + 60)


def test_upper_case_and_lightning_scheme_are_accepted():
    assert decode_invoice("lightning:" + SPEC_COFFEE.upper()).payment_hash == SPEC_HASH


def test_round_trip_keeps_every_field():
    preimage, payment_hash = preimage_and_hash()

    pr = encode_invoice(
        21_000,
        private_key_hex=NODE_KEY,
        network="regtest",
        description="Boltcard tap 7",
        expiry=600,
        timestamp=1_700_000_000,
        payment_hash=payment_hash,
    )
    invoice = decode_invoice(pr)

    assert pr.startswith("lnbcrt210n1")
    assert hashlib.sha256(preimage).hexdigest() == invoice.payment_hash
    assert invoice.amount_msat == 21_000
    assert invoice.network == "bcrt"
    assert invoice.description == "Boltcard tap 7"
    assert invoice.expiry == 600
    assert invoice.timestamp == 1_700_000_000
    assert invoice.payee == bolt11.decode(pr).payee
    assert invoice.payment_request == pr


@pytest.mark.parametrize(
    ("network", "prefix", "hrp"),
    [
        ("mainnet", "bc", "lnbc"),
        ("testnet", "tb", "lntb"),
        ("signet", "tbs", "lntbs"),
        ("regtest", "bcrt", "lnbcrt"),
    ],
)
def test_each_network_is_encoded_and_reported(network, prefix, hrp):
    pr = encode_invoice(5_000_000, network=network)

    assert pr.startswith(hrp + "50u1")
    assert decode_invoice(pr).network == prefix
    assert decode_invoice(pr).network_name == network
    assert network_prefix(network) == prefix


def test_invoice_without_amount_reports_none():
    assert decode_invoice(encode_invoice(None)).amount_msat is None


def test_unknown_network_name_is_refused():
    with pytest.raises(ValueError, match="unknown network"):
        encode_invoice(1000, network="litecoin")


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello", "bech32"),
        ("lnbc1", "bech32"),
        ("bitcoin:bc1qxyz", "bech32"),
        (SPEC_COFFEE[:-1] + ("q" if SPEC_COFFEE[-1] != "q" else "p"), "checksum"),
        (SPEC_COFFEE[:100], "checksum"),
        (SPEC_COFFEE.replace("lnbc2500u", "lnBC2500u"), "case"),
        (SPEC_COFFEE + "q", "checksum"),
        (SPEC_COFFEE + "b", "bech32"),
        ("lnbc2500u1" + "\u00e9" * 60, "bech32"),
        ("x" * 8000, "too long"),
    ],
)
def test_garbage_is_rejected_with_a_reason(garbage, reason):
    with pytest.raises(InvoiceError, match=reason):
        decode_invoice(garbage)


@pytest.mark.parametrize("value", [None, 12, b"lnbc"])
def test_non_text_is_rejected(value):
    with pytest.raises(InvoiceError):
        decode_invoice(value)


def _rechecksum(hrp: str, data: list[int]) -> str:
    return bech32_encode(hrp, data)


def _bech32_parts(pr: str) -> tuple[str, list[int]]:
    pos = pr.rfind("1")
    return pr[:pos], [CHARSET.find(char) for char in pr[pos + 1 : -6]]


def test_altered_invoice_with_a_valid_checksum_names_another_payee():
    # Changing the amount keeps a valid bech32 string but the signature now recovers to a
    # different node: a decoder must not report the original payee.
    _, data = _bech32_parts(SPEC_COFFEE)
    altered = _rechecksum("lnbc2400u", data)

    invoice = decode_invoice(altered)

    assert invoice.amount_msat == 240_000_000
    assert invoice.payee != SPEC_PAYEE


def test_unknown_network_prefix_is_rejected():
    _, data = _bech32_parts(SPEC_COFFEE)

    with pytest.raises(InvoiceError, match="not a known network"):
        decode_invoice(_rechecksum("lnltc2500u", data))


def test_sub_millisatoshi_amount_is_rejected():
    _, data = _bech32_parts(SPEC_COFFEE)

    with pytest.raises(InvoiceError, match="whole number of millisatoshis"):
        decode_invoice(_rechecksum("lnbc25p", data))


def test_invoice_without_payment_secret_is_rejected():
    hrp, data = _bech32_parts(SPEC_COFFEE)
    # The first field after the timestamp is the payment secret (tag 's', 52 groups).
    assert data[7] == 16 and data[8] * 32 + data[9] == 52
    data = [*data[:7], 31, *data[8:]]  # retag it as an unknown field

    with pytest.raises(InvoiceError, match="payment secret"):
        decode_invoice(_rechecksum(hrp, data))


def test_truncated_signature_is_rejected():
    hrp, data = _bech32_parts(SPEC_COFFEE)

    with pytest.raises(InvoiceError):
        decode_invoice(_rechecksum(hrp, data[:60]))


def test_payee_field_that_does_not_match_the_signature_is_rejected():
    other_node = bolt11.decode(encode_invoice(1000, private_key_hex=NODE_KEY)).payee
    hrp, data = _bech32_parts(SPEC_COFFEE)
    body, signature = data[:-104], data[-104:]
    payee_u5 = _bytes_to_u5(bytes.fromhex(other_node))
    n_field = [19, len(payee_u5) // 32, len(payee_u5) % 32, *payee_u5]

    with pytest.raises(InvoiceError, match="payee"):
        decode_invoice(_rechecksum(hrp, body + n_field + signature))


def _bytes_to_u5(data: bytes) -> list[int]:
    bits = len(data) * 8
    pad = -bits % 5
    value = int.from_bytes(data, "big") << pad
    count = (bits + pad) // 5
    return [(value >> (5 * (count - 1 - i))) & 31 for i in range(count)]


@settings(max_examples=60, deadline=None)
@given(
    # Below 1,000 BTC: bolt11 2.2.0's encoder divides once too often for whole multiples of
    # 1,000 BTC (10**14 msat becomes "lnbc1", 1 BTC), so the reference cannot encode them.
    amount=st.one_of(st.none(), st.integers(min_value=1, max_value=10**14 - 1)),
    network=st.sampled_from(["mainnet", "testnet", "signet", "regtest"]),
    description=st.text(max_size=120),
    expiry=st.integers(min_value=1, max_value=10**7),
    timestamp=st.integers(min_value=1_500_000_000, max_value=2**35 - 1),
)
def test_decoding_agrees_with_the_bolt11_package(amount, network, description, expiry, timestamp):
    pr = encode_invoice(
        amount, network=network, description=description, expiry=expiry, timestamp=timestamp
    )

    ours = decode_invoice(pr)
    reference = bolt11.decode(pr)

    assert ours.payment_hash == reference.payment_hash
    assert ours.payment_secret == reference.payment_secret
    assert ours.amount_msat == (int(reference.amount_msat) if reference.amount_msat else None)
    assert ours.amount_msat == amount
    assert ours.timestamp == reference.date == timestamp
    assert ours.expiry == reference.expiry == expiry
    assert ours.network == reference.currency
    assert ours.description == reference.description == description
    assert ours.payee == reference.payee
    assert ours.min_final_cltv_expiry == reference.min_final_cltv_expiry


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_escapes_as_another_exception(text):
    with contextlib.suppress(InvoiceError):
        decode_invoice(text)


@settings(max_examples=300, deadline=None)
@given(
    hrp=st.sampled_from(["lnbc", "lnbcrt", "lntb", "lntbs", "lnbc10u", "lnbc1p"]),
    data=st.lists(st.integers(min_value=0, max_value=31), max_size=400),
)
def test_well_checksummed_nonsense_never_escapes_as_another_exception(hrp, data):
    # A valid checksum gets past the first gate, so this exercises the field parser.
    with contextlib.suppress(InvoiceError):
        decode_invoice(bech32_encode(hrp, data))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("qpzry9x8gf2tvdw0s3jn54k"))
def test_a_mistyped_character_is_rejected(position, replacement):
    index = 12 + position % (len(SPEC_COFFEE) - 12)
    if SPEC_COFFEE[index] == replacement:
        return
    mistyped = SPEC_COFFEE[:index] + replacement + SPEC_COFFEE[index + 1 :]

    with pytest.raises(InvoiceError, match="checksum"):
        decode_invoice(mistyped)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=31), max_size=700))
def test_fast_bit_conversion_equals_the_libraries_own(groups):
    from bolt11 import bit_utils

    from lnurl_gateway.invoices import u5_to_bitarray

    assert u5_to_bitarray(groups) == bit_utils.u5_to_bitarray(groups)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=31), max_size=700))
def test_fast_checksum_equals_the_libraries_own(values):
    import bech32

    from lnurl_gateway import invoices

    assert bech32.bech32_polymod is invoices.bech32_polymod  # installed in the package
    assert invoices.bech32_polymod(values) == invoices._library_polymod(values)


def test_an_amount_the_bolt11_encoder_would_write_wrongly_is_refused():
    # bolt11 2.2.0 would write 1,000 BTC as "lnbc1" (1 BTC); the minter refuses instead.
    with pytest.raises(ValueError, match="1,000 BTC"):
        encode_invoice(10**14)
    assert decode_invoice(encode_invoice(10**14 - 1000)).amount_msat == 10**14 - 1000
