"""Payouts overview: the merchant's board (summary cards, trends, status, top cards, the list)."""

from __future__ import annotations

from typing import Any

from grafanalib.core import BarGauge, PieChartv2, Stat, Table, TimeSeries

from dashboards import sql
from dashboards.common import (
    API_EXPORT_PATH,
    DETAIL_UID,
    OVERVIEW_UID,
    STORE_FILTER,
    Layout,
    api_url_variable,
    board,
    board_links,
    board_path,
    custom_variable,
    datasource_variable,
    prom,
    sql_target,
    store_variable,
    textbox_variable,
)
from ledger.status import STATUSES

STATUS_COLOURS = {
    "Pending": "yellow",
    "Processing": "blue",
    "Completed": "green",
    "Failed": "red",
}


def _stat(title: str, target: object, description: str, unit: str = "none") -> Stat:
    return Stat(
        title=title,
        description=description,
        targets=[target],
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
        noValue="0" if unit != "percentunit" else "-",
        decimals=None if unit == "percentunit" else 0,
    )


def _total(title: str, raw: str, description: str, unit: str = "none") -> Stat:
    return _stat(title, sql_target(raw), description + DAYS_NOTE, unit)


# The totals count whole UTC days, as the API's statistics do.
DAYS_NOTE = (
    " Counted from the ledger's daily rollup over the whole UTC days the period touches, by "
    "creation day and status now: the same figures as the API's /payouts/stats."
)


def export_link() -> dict[str, Any]:
    """The API's CSV export of every payout of the row's store that the list's filters match."""
    query = "&".join(
        [
            'storeId=${__data.fields["Store id"]}',
            "startDate=${__from:date:iso}",
            "endDate=${__to:date:iso}",
            "status=${status:csv}",
            'boltcardId=${__data.fields["Card id"]}',
            "q=${search:percentencode}",
            "format=csv",
        ]
    )
    return {
        "title": "Export these payouts as CSV (API)",
        "url": "${api_url}" + API_EXPORT_PATH + "?" + query,
        "targetBlank": True,
    }


def status_mappings() -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                status: {"color": colour, "index": i, "text": status}
                for i, (status, colour) in enumerate(STATUS_COLOURS.items())
            },
        }
    ]


def _status_colour_overrides() -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": status},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
        }
        for status, colour in STATUS_COLOURS.items()
    ]


def _trend(title: str, raw: str, description: str) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        targets=[sql_target(raw, table=False)],
        lineWidth=2,
        showPoints="always",
        legendDisplayMode="list",
        overrides=_status_colour_overrides(),
    )


layout = Layout()
panels = [
    layout.place(_total("Payouts", sql.TOTAL_PAYOUTS, "Payouts created in the period."), 4, 4),
    layout.place(
        _total(
            "Value",
            sql.TOTAL_SATS,
            "Value of the payouts created in the period, in sats.",
            unit="suffix: sats",
        ),
        4,
        4,
    ),
    layout.place(
        _total("Completed", sql.TOTAL_COMPLETED, "Payouts of the period completed now."), 3, 4
    ),
    layout.place(_total("Failed", sql.TOTAL_FAILED, "Payouts of the period failed now."), 3, 4),
    layout.place(
        _stat(
            "Pending now",
            prom(f'sum(flash_payouts{{{STORE_FILTER}, status="Pending"}})', instant=True),
            "Payouts waiting for approval now (live, from Prometheus).",
        ),
        2,
        4,
    ),
    layout.place(
        _stat(
            "Processing now",
            prom(f'sum(flash_payouts{{{STORE_FILTER}, status="Processing"}})', instant=True),
            "Payouts approved and being paid now (live, from Prometheus).",
        ),
        2,
        4,
    ),
    layout.place(
        _total(
            "Success rate",
            sql.SUCCESS_RATE,
            "Completed among the payouts of the period that finished (completed or failed).",
            unit="percentunit",
        ),
        3,
        4,
    ),
    layout.place(
        _total(
            "Active cards",
            sql.ACTIVE_CARDS,
            "Boltcards that collected at least one payout in the period.",
        ),
        3,
        4,
    ),
]
layout.newline()
panels += [
    layout.place(
        _trend(
            "Payouts per day",
            sql.TREND_DAY,
            "Payouts created each day, by their status now (from the daily rollup).",
        ),
        8,
        8,
    ),
    layout.place(
        _trend("Payouts per week", sql.TREND_WEEK, "Payouts created each week, by status now."),
        8,
        8,
    ),
    layout.place(
        _trend("Payouts per month", sql.TREND_MONTH, "Payouts created each month, by status now."),
        8,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        PieChartv2(
            title="Status distribution",
            description="Payouts created in the period, by their status now.",
            targets=[sql_target(sql.STATUS_DISTRIBUTION)],
            pieType="donut",
            legendDisplayMode="table",
            legendPlacement="right",
            legendValues=["value", "percent"],
            reduceOptionsValues=True,
            reduceOptionsFields="/^Payouts$/",
            overrides=_status_colour_overrides(),
            extraJson={"options": {"displayLabels": ["percent"]}},
        ),
        6,
        8,
    ),
    layout.place(
        BarGauge(
            title="Top Boltcards",
            description="The cards that collected the most value in the period (alias, or "
            "card id), as the API's topCards ranks them." + DAYS_NOTE,
            targets=[sql_target(sql.TOP_CARDS)],
            # The id ties the bars to the API's topCards; the bars are named by "Card" alone.
            transformations=[{"id": "organize", "options": {"excludeByName": {"Card id": True}}}],
            extraJson={
                "options": {
                    "displayMode": "basic",
                    "orientation": "horizontal",
                    "reduceOptions": {
                        "calcs": ["lastNotNull"],
                        "fields": "/^Sats$/",
                        "values": True,
                    },
                    "showUnfilled": True,
                    "valueMode": "color",
                    "namePlacement": "auto",
                    "sizing": "auto",
                },
                "fieldConfig": {"defaults": {"decimals": 0, "min": 0, "unit": "suffix: sats"}},
            },
        ),
        9,
        8,
    ),
    layout.place(
        TimeSeries(
            title="Completion time",
            description="Seconds from a payout's creation to its completion (p50 and p95).",
            targets=[
                prom(
                    "histogram_quantile(0.5, sum by (le) (rate(flash_payout_completion_seconds"
                    f"_bucket{{{STORE_FILTER}}}[$__rate_interval])))",
                    "p50",
                    "A",
                ),
                prom(
                    "histogram_quantile(0.95, sum by (le) (rate(flash_payout_completion_seconds"
                    f"_bucket{{{STORE_FILTER}}}[$__rate_interval])))",
                    "p95",
                    "B",
                ),
            ],
            unit="s",
            lineWidth=2,
        ),
        9,
        8,
    ),
]
layout.newline()
panels.append(
    layout.place(
        Table(
            title="Payout list",
            description=f"Newest first, within the picked period, the store, status, card and "
            f"search filters; at most {sql.LIST_LIMIT:,} rows (the panel below says how many "
            "match, and exports them all). Click a payout id for its detail; click a column "
            "header to sort.",
            targets=[sql_target(sql.PAYOUTS_TABLE)],
            filterable=True,
            sortBy=[],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Status"},
                    "properties": [
                        {"id": "mappings", "value": status_mappings()},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Payout"},
                    "properties": [
                        {
                            "id": "links",
                            "value": [
                                {
                                    "title": "Payout detail",
                                    "url": board_path(DETAIL_UID)
                                    + "?var-payout=${__value.raw}&${__url_time_range}"
                                    + "&${store:queryparam}",
                                }
                            ],
                        }
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Sats"},
                    "properties": [{"id": "unit", "value": "none"}, {"id": "decimals", "value": 0}],
                },
            ],
            extraJson={
                "options": {
                    "cellHeight": "sm",
                    "footer": {"show": False, "enablePagination": True},
                    "sortBy": [{"displayName": "Created", "desc": True}],
                },
            },
        ),
        24,
        14,
    )
)
layout.newline()
panels.append(
    layout.place(
        Table(
            title="Payouts listed",
            description=f"Per store: the payouts the list above shows (its newest "
            f"{sql.LIST_LIMIT:,} across the stores) and all that match its filters. The "
            "export link streams every matching payout of the store from the API as CSV (the "
            "API asks for the store's token or BTCPay API key).",
            targets=[sql_target(sql.PAYOUTS_LISTED)],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Matching"},
                    "properties": [{"id": "links", "value": [export_link()]}],
                },
                {
                    "matcher": {"id": "byName", "options": "Store id"},
                    "properties": [{"id": "custom.hidden", "value": True}],
                },
                {
                    "matcher": {"id": "byName", "options": "Card id"},
                    "properties": [{"id": "custom.hidden", "value": True}],
                },
            ],
            extraJson={
                "options": {
                    "cellHeight": "sm",
                    "footer": {
                        "show": True,
                        "reducer": ["sum"],
                        "fields": ["Listed", "Matching"],
                        "countRows": False,
                    },
                },
            },
        ),
        24,
        5,
    )
)

dashboard = board(
    uid=OVERVIEW_UID,
    title="Payouts overview",
    description="Pull-payment payouts collected with Boltcards: totals, trends, status, the "
    "busiest cards and every payout, for the picked period and stores.",
    panels=panels,
    variables=[
        datasource_variable(),
        store_variable(),
        custom_variable("status", "Status", STATUSES),
        textbox_variable("card", "Card (id or alias)"),
        textbox_variable("search", "Search (payout id or its start, amount, sats)"),
        api_url_variable(),
    ],
    links=board_links(),
)
