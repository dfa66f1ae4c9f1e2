"""The ledger: the single source of truth shared by the gateway, the exporter and the API."""
