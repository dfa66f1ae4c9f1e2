"""Boltcards: taps by outcome, refusals and their reasons, usage per card, and one card's story."""

from __future__ import annotations

from grafanalib.core import BarGauge, Table, TimeSeries

from dashboards import sql
from dashboards.common import (
    CARDS_UID,
    STORE_FILTER,
    Layout,
    board,
    board_links,
    datasource_variable,
    prom,
    sql_target,
    sql_variable,
    store_variable,
)

# Taps of cards no store knows carry an empty store label; the boards show them beside the
# picked stores, since they belong to none.
TAP_STORES = 'store=~"$store|"'

layout = Layout()
panels = [
    layout.place(
        TimeSeries(
            title="Taps by outcome",
            description="Boltcard taps per second, accepted or refused, by outcome.",
            targets=[
                prom(
                    f"sum by (outcome) (rate(flash_taps_total{{{TAP_STORES}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=20,
        ),
        12,
        8,
    ),
    layout.place(
        BarGauge(
            title="Refused taps by reason",
            description="Taps refused in the period, by reason (replayed counter, bad MAC, "
            "unknown card, limit, ...).",
            targets=[
                prom(
                    "sort_desc(sum by (outcome) (increase(flash_taps_total"
                    f'{{{TAP_STORES}, outcome!="accepted"}}[$__range])))',
                    "{{outcome}}",
                    instant=True,
                )
            ],
            extraJson={
                "options": {
                    "displayMode": "basic",
                    "orientation": "horizontal",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True,
                },
                "fieldConfig": {"defaults": {"decimals": 0, "min": 0, "unit": "none"}},
            },
        ),
        6,
        8,
    ),
    layout.place(
        TimeSeries(
            title="Active cards",
            description="Distinct cards that collected a payout in the last hour and day.",
            targets=[
                prom(
                    f'sum by (window) (flash_active_cards{{{STORE_FILTER}, window=~"1h|1d"}})',
                    "{{window}}",
                )
            ],
        ),
        6,
        8,
    ),
]
layout.newline()
panels += [
    layout.place(
        Table(
            title="Usage per card",
            description="Payouts, value and taps of each card in the period (daily rollup), "
            "busiest first.",
            targets=[sql_target(sql.CARD_USAGE)],
            filterable=True,
            extraJson={"options": {"cellHeight": "sm", "footer": {"enablePagination": True}}},
        ),
        14,
        10,
    ),
    layout.place(
        Table(
            title="Refused taps",
            description="The latest refused taps in the period, with the gateway's reason.",
            targets=[sql_target(sql.REFUSED_TAPS)],
            filterable=True,
            extraJson={"options": {"cellHeight": "sm", "footer": {"enablePagination": True}}},
        ),
        10,
        10,
    ),
]
layout.newline()
panels += [
    layout.place(
        Table(
            title="Card",
            description="The card picked above.",
            targets=[sql_target(sql.CARD_INFO)],
            extraJson={
                "options": {"cellHeight": "sm", "footer": {"show": False}},
                "transformations": [{"id": "transpose", "options": {}}],
            },
        ),
        6,
        9,
    ),
    layout.place(
        TimeSeries(
            title="This card's taps",
            description="Taps of the picked card over time, by outcome.",
            targets=[sql_target(sql.CARD_TAPS_OVER_TIME, table=False)],
            drawStyle="bars",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=60,
        ),
        9,
        9,
    ),
    layout.place(
        TimeSeries(
            title="This card's payouts",
            description="Payouts collected by the picked card over time, and their value.",
            targets=[sql_target(sql.CARD_PAYOUTS_OVER_TIME, table=False)],
            drawStyle="bars",
            fillOpacity=60,
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Sats"},
                    "properties": [
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "custom.drawStyle", "value": "line"},
                    ],
                }
            ],
        ),
        9,
        9,
    ),
]
# Last, so the panels above keep their ids (alert rules link to them).
layout.newline()
panels += [
    layout.place(
        TimeSeries(
            title="Callbacks by outcome",
            description="LNURL-withdraw callbacks of accepted taps per second, by outcome: paid, "
            "or why not (invoice refused, over the limit, BTCPay refused or unavailable, ...).",
            targets=[
                prom(
                    "sum by (outcome) (rate(flash_callbacks_total"
                    f"{{{TAP_STORES}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=20,
        ),
        12,
        8,
    ),
    layout.place(
        TimeSeries(
            title="BTCPay card callbacks by outcome",
            description="Callbacks of taps forwarded to BTCPay's own Boltcard endpoint per "
            "second, by BTCPay's answer.",
            targets=[
                prom(
                    "sum by (outcome) (rate(flash_btcpay_callbacks_total"
                    f"{{{TAP_STORES}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            stacking={"mode": "normal", "group": "A"},
            fillOpacity=20,
        ),
        12,
        8,
    ),
]

dashboard = board(
    uid=CARDS_UID,
    title="Boltcards",
    description="Boltcard activity: taps accepted and refused, the reasons for refusals, usage "
    "per card, and the taps and payouts of one card.",
    panels=panels,
    variables=[
        datasource_variable(),
        store_variable(),
        sql_variable("card", "Card", sql.CARD_CHOICES),
    ],
    links=board_links(),
)
