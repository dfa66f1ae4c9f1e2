"""What every board shares: datasource uids, variables, panel placement and serialisation."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Panel,
    SqlTarget,
    Target,
    Template,
    Templating,
    Time,
)

# Fixed datasource uids: the provisioning, the dashboards and the alert rules refer to these.
PROMETHEUS_UID = "flash-prometheus"
POSTGRES_UID = "flash-postgres"
POSTGRES_TYPE = "grafana-postgresql-datasource"

# Panels on Prometheus follow the board's datasource variable, so a second Prometheus can be
# picked without editing the board.
PROM = {"type": "prometheus", "uid": "${datasource}"}
PG = {"type": POSTGRES_TYPE, "uid": POSTGRES_UID}

# Grafana 11's dashboard schema; older ones are migrated on load and marked as changed.
SCHEMA_VERSION = 39

OVERVIEW_UID = "flash-payouts-overview"
DETAIL_UID = "flash-payout-detail"
CARDS_UID = "flash-boltcards"
HEALTH_UID = "flash-service-health"

BOARD_SLUGS = {
    OVERVIEW_UID: "payouts-overview",
    DETAIL_UID: "payout-detail",
    CARDS_UID: "boltcards",
    HEALTH_UID: "service-health",
}

# The store variable filters Prometheus series with ``store=~"$store"`` and SQL rows with
# ``store_id IN ($store)``: Grafana renders a multi-value variable as a regex for the one and
# as a quoted list for the other.
STORE_FILTER = 'store=~"$store"'


def board_path(uid: str) -> str:
    return f"/d/{uid}/{BOARD_SLUGS[uid]}"


def datasource_variable() -> Template:
    return Template(
        name="datasource",
        label="Prometheus",
        type="datasource",
        query="prometheus",
        default=PROMETHEUS_UID,
        refresh=1,
    )


def store_variable() -> Template:
    tpl = Template(
        name="store",
        label="Store",
        type="query",
        dataSource=PROM,
        query="label_values(flash_store_info, store)",
        includeAll=True,
        multi=True,
        refresh=1,
    )
    return _all_selected(tpl)


def custom_variable(name: str, label: str, values: Iterable[str]) -> Template:
    tpl = Template(
        name=name,
        label=label,
        type="custom",
        query=",".join(values),
        includeAll=True,
        multi=True,
    )
    return _all_selected(tpl)


def textbox_variable(name: str, label: str, default: str = "") -> Template:
    return Template(name=name, label=label, type="textbox", query=default, default=default)


def sql_variable(name: str, label: str, sql: str) -> Template:
    return Template(
        name=name,
        label=label,
        type="query",
        dataSource=PG,
        query=sql,
        refresh=2,  # on time range change: the list follows the period and the store
        sort=0,  # the query's own order
    )


def _all_selected(tpl: Template) -> Template:
    tpl._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return tpl


@dataclass
class Layout:
    """Places panels left to right in rows of Grafana's 24 columns and numbers them."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1

    def place(self, panel: Panel, w: int, h: int) -> Panel:
        if self.x + w > 24:
            self.newline()
        placed = attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=self.x, y=self.y), id=self.next_id)
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        return placed

    def newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def board(
    *,
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: list[Template],
    time_from: str = "now-7d",
    links: list[dict[str, Any]] | None = None,
) -> Dashboard:
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=["flash-payouts"],
        timezone="browser",
        refresh="30s",
        schemaVersion=SCHEMA_VERSION,
        editable=False,
        time=Time(time_from, "now"),
        templating=Templating(list=variables),
        panels=panels,
        links=links or [],
        graphTooltip=1,
    )


def board_links() -> list[dict[str, Any]]:
    """The header links from one board to the others (Grafana finds them by tag)."""
    return [
        {
            "type": "dashboards",
            "tags": ["flash-payouts"],
            "asDropdown": True,
            "title": "Flash boards",
            "includeVars": True,
            "keepTime": True,
        }
    ]


def to_json(dashboard: Dashboard) -> str:
    data = dashboard.to_json_data()
    return json.dumps(data, cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def to_dict(dashboard: Dashboard) -> dict[str, Any]:
    return json.loads(to_json(dashboard))


def prom(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> Target:
    return Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        datasource=PROM,
        intervalFactor=1,
    )


def sql_target(raw: str, ref: str = "A", *, table: bool = True) -> SqlTarget:
    return SqlTarget(
        rawSql=raw,
        refId=ref,
        format="table" if table else "time_series",
        datasource=PG,
        intervalFactor=1,
    )
