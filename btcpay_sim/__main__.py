"""`python -m btcpay_sim --listen 127.0.0.1:23000`: a BTCPay Server 2.x stand-in."""

from __future__ import annotations

import argparse
import os

from .app import run
from .config import Faults, ProgressDelays, SimConfig


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FLASH_BTCPAY_SIM_{name.upper()}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btcpay-sim",
        description="BTCPay Server 2.x simulator (Greenfield payouts, webhooks, faults). "
        "Every flag can also be set as FLASH_BTCPAY_SIM_<FLAG>.",
    )
    parser.add_argument("--listen", default=_env("listen", "127.0.0.1:23000"))
    parser.add_argument("--network", default=_env("network", "bcrt"))
    parser.add_argument("--public-url", default=_env("public_url", "") or None)
    parser.add_argument(
        "--no-auto-progress",
        action="store_true",
        default=_env("no_auto_progress", "") == "1",
        help="leave approved payouts in AwaitingPayment until changed over the API",
    )
    parser.add_argument("--start-delay", type=float, default=float(_env("start_delay", "0.5")))
    parser.add_argument("--settle-delay", type=float, default=float(_env("settle_delay", "1")))
    parser.add_argument("--cancel-rate", type=float, default=float(_env("cancel_rate", "0")))
    parser.add_argument(
        "--silent-cancel-rate", type=float, default=float(_env("silent_cancel_rate", "0"))
    )
    parser.add_argument(
        "--redelivery-scale", type=float, default=float(_env("redelivery_scale", "1"))
    )
    parser.add_argument("--latency", type=float, default=float(_env("latency", "0")))
    parser.add_argument("--seed", type=int, default=int(_env("seed", "-1")))
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        network=args.network,
        public_url=args.public_url,
        auto_progress=not args.no_auto_progress,
        progress_delays=ProgressDelays(start=args.start_delay, settle=args.settle_delay),
        cancel_rate=args.cancel_rate,
        silent_cancel_rate=args.silent_cancel_rate,
        redelivery_scale=args.redelivery_scale,
        faults=Faults(latency=args.latency),
        seed=None if args.seed < 0 else args.seed,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run(args.listen, config_from_args(args))


if __name__ == "__main__":
    main()
