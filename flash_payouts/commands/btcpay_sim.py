"""`flash-payouts btcpay-sim --listen HOST:PORT`: run the BTCPay Server simulator."""

from __future__ import annotations

import argparse

from btcpay_sim import run
from btcpay_sim.__main__ import add_arguments, config_from_args

from ..settings import ConfigError, listen_address


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    # No settings parents: the simulator is its own server, configured by its own flags
    # (each also FLASH_BTCPAY_SIM_<FLAG>), and shares nothing with the monitor's settings.
    p = sub.add_parser(
        "btcpay-sim",
        help="run a BTCPay Server 2.x simulator for tests, demos and benchmarks",
        description="A BTCPay Server 2.x stand-in: Greenfield stores, pull payments, payouts, "
        "API keys and signed webhooks, with fault control under /_sim/. "
        "See docs/btcpay-simulator.md.",
    )
    add_arguments(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    listen_address(args.listen)  # one-line error for a bad HOST:PORT
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise ConfigError(f"btcpay-sim: {exc}") from None
    try:
        run(args.listen, config)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    return 0
