"""`flash-payouts serve` and `flash-payouts exporter`."""

from __future__ import annotations

import argparse

from ..serve import SERVICES, run_services
from ..settings import load


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        parents=parents,
        help="run the gateway, API and metrics listeners and the report schedule",
        description="Run the gateway (Boltcard taps, LNURL callbacks, BTCPay webhooks), the REST "
        "API, the Prometheus /metrics listener and the scheduled reports in one process, or "
        "only those named.",
    )
    p.add_argument(
        "--services",
        default=",".join(SERVICES),
        metavar="LIST",
        help=f"comma-separated services to run (default {','.join(SERVICES)})",
    )
    p.set_defaults(handler=_serve)

    e = sub.add_parser(
        "exporter",
        parents=parents,
        help="run the Prometheus /metrics listener alone",
        description="Run only the metrics listener (the exporter) on --metrics-listen.",
    )
    e.set_defaults(handler=_exporter)


async def _serve(args: argparse.Namespace) -> int:
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    await run_services(load(args), services)
    return 0


async def _exporter(args: argparse.Namespace) -> int:
    await run_services(load(args), ["metrics"])
    return 0
