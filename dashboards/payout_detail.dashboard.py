"""Payout detail: one payout, its audit trail, the taps behind it and its card."""

from __future__ import annotations

from grafanalib.core import Table

from dashboards import sql
from dashboards.common import (
    CARDS_UID,
    DETAIL_UID,
    Layout,
    board,
    board_links,
    board_path,
    datasource_variable,
    sql_target,
    store_variable,
    textbox_variable,
)


def _table(title: str, raw: str, description: str, **extra: object) -> Table:
    return Table(
        title=title,
        description=description,
        targets=[sql_target(raw)],
        extraJson={"options": {"cellHeight": "sm", "footer": {"show": False}}, **extra},
    )


layout = Layout()
panels = [
    layout.place(
        _table(
            "Payout",
            sql.PAYOUT_DETAIL,
            "Everything the ledger holds about the payout (pick one from the overview's list, "
            "or type its id above).",
            transformations=[{"id": "transpose", "options": {}}],
        ),
        12,
        14,
    ),
    layout.place(
        Table(
            title="Card",
            description="The Boltcard that collected this payout, when one did.",
            targets=[sql_target(sql.PAYOUT_CARD)],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Card"},
                    "properties": [
                        {
                            "id": "links",
                            "value": [
                                {
                                    "title": "This card's activity",
                                    "url": board_path(CARDS_UID)
                                    + "?var-card=${__value.raw}&${__url_time_range}"
                                    + "&${store:queryparam}",
                                }
                            ],
                        }
                    ],
                }
            ],
            extraJson={
                "options": {"cellHeight": "sm", "footer": {"show": False}},
                "transformations": [{"id": "transpose", "options": {}}],
            },
        ),
        12,
        14,
    ),
]
layout.newline()
panels += [
    layout.place(
        _table(
            "Event history",
            sql.PAYOUT_EVENTS,
            "Every change the ledger recorded for the payout: from the gateway's claim, "
            "BTCPay's webhooks and the reconciler, oldest first.",
        ),
        14,
        9,
    ),
    layout.place(
        _table(
            "Taps",
            sql.PAYOUT_TAPS,
            "The card taps that led to this payout.",
        ),
        10,
        9,
    ),
]

dashboard = board(
    uid=DETAIL_UID,
    title="Payout detail",
    description="One payout: its amounts and state, the transaction, the Boltcard that collected "
    "it and every event that changed it.",
    panels=panels,
    variables=[
        datasource_variable(),
        store_variable(),
        textbox_variable("payout", "Payout id"),
    ],
    time_from="now-30d",
    links=board_links(),
)
