"""`flash-payouts dashboards generate`: rewrite the Grafana, Prometheus and Alertmanager files."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards, alert rules and provisioning")
    actions = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    g = actions.add_parser(
        "generate",
        help="write the provisioning files (dashboards, alert rules, datasources, Prometheus)",
        description="Write every file of provisioning/ from the code in dashboards/: Grafana "
        "datasources, dashboards and alerting, the Prometheus configuration, rules and promtool "
        "tests, and the Alertmanager configuration.",
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
    from dashboards.generate import DEFAULT_OUT, generate

    out = args.out or DEFAULT_OUT
    try:
        written = generate(out)
    except OSError as exc:
        raise CommandError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} files under {out}")
    return 0
