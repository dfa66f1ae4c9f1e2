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
# Grafana's own reference for a panel whose queries go to more than one datasource.
MIXED = {"type": "datasource", "uid": "-- Mixed --"}

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
# as a quoted list for the other. Its values are store ids, its texts the stores' names.
STORE_FILTER = 'store=~"$store"'
STORE_CHOICES = """
SELECT store_id AS __value,
       coalesce(nullif(name, ''), store_id) AS __text
  FROM grafana_stores
 ORDER BY 2, 1
""".strip()


# Where the API streams a filtered payout list (api/app.py); the boards link to it.
API_EXPORT_PATH = "/plugins/flash/api/payouts/export"
API_URL_VARIABLE = "api_url"
DEFAULT_API_URL = "http://127.0.0.1:8081"


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
    # From the ledger, not from Prometheus: it names the stores, and a store's own database
    # role (one Grafana organisation per store) lists only that store.
    tpl = Template(
        name="store",
        label="Store",
        type="query",
        dataSource=PG,
        query=STORE_CHOICES,
        includeAll=True,
        multi=True,
        refresh=1,
        sort=0,
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


def api_url_variable(url: str = DEFAULT_API_URL) -> Template:
    """Where browsers reach the API, for the export links; ``dashboards generate`` sets it."""
    return Template(
        name=API_URL_VARIABLE, label="API", type="constant", query=url, default=url, hide=2
    )


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
        placed = attr.evolve(
            panel,
            gridPos=GridPos(h=h, w=w, x=self.x, y=self.y),
            id=self.next_id,
            dataSource=panel_datasource(panel.targets),
        )
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


def panel_datasource(targets: Iterable[Any]) -> dict[str, str]:
    """The panel's own datasource: its targets' one, or Mixed when they name several.

    Grafana sends a panel's queries to the panel's datasource and rewrites every target that
    names another one (PanelQueryRunner), unless the panel is Mixed; a panel without one goes
    to the default datasource. So the panel must name what its targets name.
    """
    refs = {json.dumps(t.datasource, sort_keys=True) for t in targets}
    if len(refs) == 1:
        return json.loads(refs.pop())
    return dict(MIXED)


def to_json(dashboard: Dashboard) -> str:
    data = exported(json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder)))
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


# What grafanalib writes that Grafana 11's models do not have: options of the old Graph and
# Singlestat era and of grafanalib's own layout. Grafana ignores most of them on load, but an
# export of the same board would not carry them.
_BOARD_LEGACY = ("rows", "hideControls", "sharedCrosshair", "style", "__inputs", "gnetId")
_PANEL_KEYS = {
    "type", "id", "pluginVersion", "targets", "title", "description", "transparent",
    "datasource", "gridPos", "links", "repeat", "repeatDirection", "maxPerRow",
    "maxDataPoints", "transformations", "interval", "timeFrom", "timeShift",
    "hideTimeOverride", "libraryPanel", "cacheTimeout", "queryCachingTTL", "options",
    "fieldConfig",
}  # fmt: skip
_OPTIONS_LEGACY = {"bargauge": ("fieldOptions", "showThresholdLabels", "showThresholdMarkers")}
_VARIABLE_LEGACY = ("tagValuesQuery", "tagsQuery", "useTags", "tags")
_BASE_THRESHOLD = {"color": "green", "value": None}


def exported(data: dict[str, Any]) -> dict[str, Any]:
    """A grafanalib board in the shape Grafana 11 itself exports (its panel and variable
    models, no nulls where Grafana writes none)."""
    for key in _BOARD_LEGACY:
        data.pop(key, None)
    data = _without_nulls(data)
    data["panels"] = [_exported_panel(p) for p in data["panels"]]
    for variable in data["templating"]["list"]:
        for key in _VARIABLE_LEGACY:
            variable.pop(key, None)
        variable.get("current", {}).pop("tags", None)
        if variable["type"] != "interval":
            for key in ("auto", "auto_count", "auto_min"):
                variable.pop(key, None)
        if variable["type"] in ("textbox", "custom", "constant", "datasource"):
            variable.pop("datasource", None)
    return data


def _exported_panel(panel: dict[str, Any]) -> dict[str, Any]:
    panel = {k: v for k, v in panel.items() if k in _PANEL_KEYS}
    options = panel.setdefault("options", {})
    for key in _OPTIONS_LEGACY.get(panel["type"], ()):
        options.pop(key, None)
    defaults = panel.setdefault("fieldConfig", {}).setdefault("defaults", {})
    panel["fieldConfig"].setdefault("overrides", [])
    thresholds = defaults.setdefault("thresholds", {"mode": "absolute"})
    steps = thresholds.get("steps")
    thresholds["steps"] = [dict(_BASE_THRESHOLD)] + [
        {"color": s["color"], "value": float(s["value"])}
        for s in (steps if isinstance(steps, list) else [])[1:]
    ]
    custom = defaults.get("custom")
    if panel["type"] == "table" and isinstance(custom, dict):
        # Grafana 10.1 replaced the table's displayMode with cellOptions (migration 38).
        mode = custom.pop("displayMode", "auto")
        custom.setdefault("cellOptions", {"type": mode})
    if custom == {}:
        defaults.pop("custom")
    return panel


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _without_nulls(v)
            for k, v in node.items()
            if v is not None or k in ("value", "datasource")
        }
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node


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
