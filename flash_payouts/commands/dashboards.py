"""`flash-payouts dashboards`: generate the provisioning files; give each store its own role."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards, alert rules and provisioning")
    actions = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    g = actions.add_parser(
        "generate",
        parents=parents,
        help="write the provisioning files (dashboards, alert rules, datasources, Prometheus)",
        description="Write every file of provisioning/ from the code in dashboards/: Grafana "
        "datasources, dashboards and alerting, the Prometheus configuration, rules and promtool "
        "tests, and the Alertmanager configuration. --grafana-url, --api-url and --runbook-url "
        "set the links the alerts and boards carry.",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write into (default: provisioning/ of this checkout)",
    )
    g.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    # Imported here: grafanalib is only needed by this command, not by serve or migrate.
    from dashboards.alerts import Thresholds
    from dashboards.generate import DEFAULT_OUT, generate
    from dashboards.provisioning import Targets

    settings = load(args)
    out = args.out or DEFAULT_OUT
    thresholds = Thresholds(grafana_url=settings.grafana_url, runbook_url=settings.runbook_url)
    targets = Targets(api_url=settings.api_base_url)
    try:
        written = generate(out, thresholds, targets)
    except OSError as exc:
        raise CommandError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} files under {out}")
    return 0
