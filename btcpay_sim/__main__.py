"""`python -m btcpay_sim --listen 127.0.0.1:23000`: a BTCPay Server 2.x stand-in.

The project CLI reuses add_arguments() and config_from_args() for `flash-payouts btcpay-sim`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .app import run
from .config import Faults, ProgressDelays, SimConfig

ENV_PREFIX = "FLASH_BTCPAY_SIM_"


def _option(
    parser: argparse.ArgumentParser, flag: str, kind: type, default: Any, help_text: str
) -> None:
    env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    raw = os.environ.get(env)
    parser.add_argument(
        flag,
        type=kind,
        default=kind(raw) if raw is not None else default,
        help=f"{help_text} [env {env}, default {default}]",
    )


def _switch(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    parser.add_argument(
        flag,
        action="store_true",
        default=os.environ.get(env, "").lower() in ("1", "true", "yes"),
        help=f"{help_text} [env {env}]",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--listen", str, "127.0.0.1:23000", "HOST:PORT to listen on")
    _option(parser, "--network", str, "bcrt", "BOLT11 network accepted in claims")
    _option(parser, "--public-url", str, "", "base URL for viewLink (default: request origin)")
    _option(
        parser,
        "--admin-key",
        str,
        "",
        "an API key BTCPay knows, with every permission (others are 401)",
    )
    _switch(
        parser,
        "--permissive-keys",
        "kinder than BTCPay: accept any unknown API key with every permission",
    )
    _option(
        parser,
        "--refund-bolt11-expiration",
        int,
        30,
        "days a pull payment created without BOLT11Expiration requires of a claimed BOLT11",
    )
    _switch(parser, "--no-auto-progress", "leave approved payouts in AwaitingPayment")
    _option(parser, "--start-delay", float, 0.5, "seconds from AwaitingPayment to InProgress")
    _option(parser, "--settle-delay", float, 1.0, "seconds from InProgress to the end state")
    _option(
        parser,
        "--payment-failure-rate",
        float,
        0.0,
        "fraction of Lightning payment attempts that fail and are tried again",
    )
    _option(parser, "--cancel-rate", float, 0.0, "fraction of payment attempts ending Cancelled")
    _option(parser, "--silent-cancel-rate", float, 0.0, "fraction cancelled without any webhook")
    _option(parser, "--redelivery-scale", float, 1.0, "multiplier of the redelivery delays")
    _option(parser, "--latency", float, 0.0, "seconds added to every Greenfield answer")
    _option(parser, "--seed", int, -1, "seed of the random choices (-1: random)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    if args.refund_bolt11_expiration < 0:
        raise ValueError("--refund-bolt11-expiration must not be negative")
    return SimConfig(
        network=args.network,
        public_url=args.public_url or None,
        api_keys={args.admin_key: ["unrestricted"]} if args.admin_key else {},
        permissive_keys=args.permissive_keys,
        refund_bolt11_expiration_days=args.refund_bolt11_expiration,
        auto_progress=not args.no_auto_progress,
        progress_delays=ProgressDelays(start=args.start_delay, settle=args.settle_delay),
        payment_failure_rate=args.payment_failure_rate,
        cancel_rate=args.cancel_rate,
        silent_cancel_rate=args.silent_cancel_rate,
        redelivery_scale=args.redelivery_scale,
        faults=Faults(latency=args.latency),
        seed=None if args.seed < 0 else args.seed,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="btcpay-sim",
        description="BTCPay Server 2.x simulator: Greenfield payouts, webhooks and faults.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args.listen, config_from_args(args))


if __name__ == "__main__":
    main()
