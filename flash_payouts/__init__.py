"""Flash Payout Monitor: the composition root (settings, the `flash-payouts` command, `serve`)."""

__version__ = "0.1.0"
