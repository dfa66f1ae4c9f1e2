"""LNURL gateway: Boltcard taps, LNURL-withdraw, BTCPay webhooks and reconciliation."""
