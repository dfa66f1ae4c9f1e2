"""Reserved for BTCPay's own Boltcard support (not simulated yet).

What belongs here, following BTCPay Server 2.x:
- an issuer key in SimConfig, with K0-K4 derived per card (boltcard DETERMINISTIC.md, the card
  key input extended with the pull payment id as BTCPay does);
- `POST /api/v1/pull-payments/{ppId}/boltcards` registering a card and answering
  `{LNURLW: "lnurlw://host/boltcard", version, K0..K4}`;
- `GET /boltcard?p=..&c=..`: decrypt p with the issuer K1, check c and the counter, answer the
  pull payment's LNURL-withdraw; the callback with `pr` claims a payout through
  PayoutBook.claim, so the payout carries `metadata` {} and the BOLT11 as its destination.

The routes would be added in app.create_app next to the Greenfield ones; the fault middleware
already treats `/boltcard` paths as BTCPay-facing.
"""
