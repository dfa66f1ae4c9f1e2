"""The listeners `serve` can run, each built from the shared settings."""
