"""The quick BOLT11 reader ingestion uses gives the bolt11 package's payment hash and amount."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnurl_gateway.invoice_fields import read_invoice_fields
from lnurl_gateway.invoices import InvoiceError, decode_invoice, encode_invoice

NETWORKS = ["bc", "tb", "tbs", "bcrt"]


@settings(max_examples=150, deadline=None)
@given(
    # Whole multiples of 1,000 BTC left out: bolt11 2.2.0 cannot write them (see test_invoices).
    amount=st.one_of(
        st.none(),
        st.integers(min_value=1, max_value=21 * 10**17).filter(lambda msat: msat % 10**14),
    ),
    network=st.sampled_from(NETWORKS),
    description=st.text(max_size=120),
    expiry=st.integers(min_value=1, max_value=10**8),
    payment_hash=st.binary(min_size=32, max_size=32),
    upper=st.booleans(),
)
def test_reader_agrees_with_the_bolt11_package(
    amount: int | None,
    network: str,
    description: str,
    expiry: int,
    payment_hash: bytes,
    upper: bool,
) -> None:
    invoice = encode_invoice(
        amount,
        network=network,
        description=description,
        expiry=expiry,
        payment_hash=payment_hash.hex(),
    )
    if upper:
        invoice = invoice.upper()
    full = decode_invoice(invoice)
    quick = read_invoice_fields(invoice)
    assert (quick.payment_hash, quick.amount_msat) == (full.payment_hash, full.amount_msat)
    assert quick.payment_hash == payment_hash.hex()


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("qpzry9x8gf2tvdw0"))
def test_a_changed_character_is_refused_like_the_package_refuses_it(
    position: int, replacement: str
) -> None:
    invoice = encode_invoice(150_000, network="bc", description="coffee")
    data_start = invoice.rfind("1") + 1
    at = data_start + position % (len(invoice) - data_start)
    if invoice[at] == replacement:
        return
    altered = invoice[:at] + replacement + invoice[at + 1 :]
    with pytest.raises(InvoiceError):
        decode_invoice(altered)
    with pytest.raises(InvoiceError):
        read_invoice_fields(altered)


@pytest.mark.parametrize(
    "text",
    ["", "lnbc1", "not an invoice", "lnbc1qqqqqqqqqqqq", "LnBc10u1" + "q" * 200, "x" * 8000, 42],
)
def test_unreadable_text_is_an_invoice_error(text: object) -> None:
    with pytest.raises(InvoiceError):
        read_invoice_fields(text)  # type: ignore[arg-type]


def test_a_lightning_uri_prefix_is_read_through() -> None:
    invoice = encode_invoice(1_000, network="bc")
    assert read_invoice_fields("lightning:" + invoice) == read_invoice_fields(invoice)
