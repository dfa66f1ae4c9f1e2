"""The REST API under /plugins/flash/api: payouts, stats, card usage, exports, live updates."""
