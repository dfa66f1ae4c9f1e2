"""The Prometheus exporter: metric families read from the ledger's rollups at scrape time."""
