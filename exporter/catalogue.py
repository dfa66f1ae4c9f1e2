"""The metric catalogue: every family the monitor exposes, in one place.

The exporter builds its families from these specs, the HTTP instrumentation names its metrics
from them, ``docs/metrics.md`` is generated from them and the dashboards and alert rules refer to
them. A name here is a promise to every panel and alert: change one only with a migration note.

Labels are bounded enums (store, status, outcome, currency, event, window, listener, route,
channel) plus ``card`` on the per-card families, which exist only for the top K cards by recent
activity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ledger.outcomes import BTCPAY_CALLBACK_OUTCOMES, CALLBACK_OUTCOMES, TAP_OUTCOMES
from ledger.reports import CHANNELS as REPORT_CHANNELS
from ledger.status import STATUSES

MetricType = Literal["counter", "gauge", "histogram"]

# Tap and callback outcomes come from the ledger, the one list the writers and the exporter share.
# Each gets a series (0 until it happens) for every store, so rate() and alerts see a series
# before the first refusal; outcomes outside these lists are exported as they appear. They are
# imported here so that the dashboards and tests find every label enum in the catalogue.

# BTCPay's payout webhook event types (Greenfield 2.x).
WEBHOOK_EVENTS: tuple[str, ...] = ("PayoutCreated", "PayoutApproved", "PayoutUpdated")

# Windows of the active-cards gauge: label value -> seconds.
ACTIVE_WINDOWS: tuple[tuple[str, int], ...] = (("1h", 3600), ("1d", 86400), ("30d", 30 * 86400))

# The listeners whose HTTP traffic is instrumented.
LISTENERS: tuple[str, ...] = ("gateway", "api", "metrics")

# Buckets of the HTTP latency histogram, in seconds.
HTTP_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class MetricSpec:
    """One family. ``name`` is what PromQL queries (counters end in ``_total``)."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    area: str = ""
    source: str = ""  # where the value comes from, for the reference

    @property
    def family(self) -> str:
        """The name given to prometheus-client, which adds ``_total`` to counters itself."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The series names this family exposes in the text format."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


S = ("store",)

CATALOGUE: tuple[MetricSpec, ...] = (
    # --- the exporter itself
    MetricSpec(
        "flash_up",
        "gauge",
        "1 when the ledger answered this scrape within its deadline, 0 when it was unreachable "
        "or too slow (the ledger families are then missing from this scrape).",
        area="exporter",
        source="a read-only transaction on the ledger",
    ),
    MetricSpec(
        "flash_exporter_scrape_duration_seconds",
        "gauge",
        "Seconds this scrape spent reading the ledger.",
        unit="seconds",
        area="exporter",
        source="measured by the exporter",
    ),
    MetricSpec(
        "flash_exporter_cached_readings_age_seconds",
        "gauge",
        "Seconds since the slow-moving readings of this scrape (flash_active_cards over 1d and "
        "30d, the choice of the top K cards) were read from the ledger: they are reused for up to "
        "a minute by default, then read again in the background, and never exported more than "
        "five times that old.",
        unit="seconds",
        area="exporter",
        source="this process",
    ),
    MetricSpec(
        "flash_exporter_scrapes_total",
        "counter",
        "Scrapes this exporter process has answered.",
        area="exporter",
        source="this process",
    ),
    MetricSpec(
        "flash_exporter_scrape_failures_total",
        "counter",
        "Scrapes whose ledger read failed or ran past the deadline (flash_up was 0).",
        area="exporter",
        source="this process",
    ),
    # --- stores
    MetricSpec(
        "flash_store_info",
        "gauge",
        "Always 1: a connected BTCPay store, its name and whether it allows per-card series.",
        labels=("store", "name", "card_tracking"),
        area="stores",
        source="stores",
    ),
    # --- payouts now (gauges over the rollups)
    MetricSpec(
        "flash_payouts",
        "gauge",
        "Payouts in the ledger now, by store and current status "
        "(Pending, Processing, Completed, Failed).",
        labels=("store", "status"),
        area="payouts",
        source="payout_rollups, summed over days",
    ),
    MetricSpec(
        "flash_payouts_value_sats",
        "gauge",
        "Value of the payouts in the ledger now, in satoshis, by store and current status; "
        "Pending and Processing are the value still to be paid.",
        labels=("store", "status"),
        unit="sats",
        area="payouts",
        source="payout_rollups, summed over days",
    ),
    MetricSpec(
        "flash_payouts_amount",
        "gauge",
        "Original amount of the payouts in the ledger now, in units of the currency label, "
        "by store, current status and currency.",
        labels=("store", "status", "currency"),
        area="payouts",
        source="payout_rollups, summed over days",
    ),
    # --- payouts over time (monotonic counters)
    MetricSpec(
        "flash_payouts_created_total",
        "counter",
        "Payouts created, by store.",
        labels=S,
        area="payouts",
        source="counters payouts_created",
    ),
    MetricSpec(
        "flash_payouts_completed_total",
        "counter",
        "Payouts that reached Completed, by store.",
        labels=S,
        area="payouts",
        source="counters payouts_completed",
    ),
    MetricSpec(
        "flash_payouts_failed_total",
        "counter",
        "Payouts that reached Failed (cancelled in BTCPay), by store.",
        labels=S,
        area="payouts",
        source="counters payouts_failed",
    ),
    MetricSpec(
        "flash_payouts_created_value_sats_total",
        "counter",
        "Value of the payouts created, in satoshis, by store.",
        labels=S,
        unit="sats",
        area="payouts",
        source="counters sats_created",
    ),
    MetricSpec(
        "flash_payouts_completed_value_sats_total",
        "counter",
        "Value of the payouts completed, in satoshis, by store.",
        labels=S,
        unit="sats",
        area="payouts",
        source="counters sats_completed",
    ),
    MetricSpec(
        "flash_payouts_created_amount_total",
        "counter",
        "Original amount of the payouts created, in units of the currency label, "
        "by store and currency.",
        labels=("store", "currency"),
        area="payouts",
        source="counters original_amount_created",
    ),
    MetricSpec(
        "flash_payout_completion_seconds",
        "histogram",
        "Seconds from a payout's creation to its completion, by store.",
        labels=S,
        unit="seconds",
        area="payouts",
        source="counters completion_seconds_bucket/_sum/_count",
    ),
    # --- taps
    MetricSpec(
        "flash_taps_total",
        "counter",
        "Boltcard taps, by store and outcome (accepted, replay, bad_mac, unknown_card, disabled, "
        "limit, ...; taps forwarded to BTCPay's own Boltcard endpoint add unidentified, "
        "btcpay_refused and btcpay_error); store is empty when the card was not recognised.",
        labels=("store", "outcome"),
        area="taps",
        source="counters taps",
    ),
    MetricSpec(
        "flash_callbacks_total",
        "counter",
        "LNURL-withdraw callbacks of accepted taps on the gateway's own cards, by store and "
        "outcome: paid, or why not (invoice_refused, duplicate_invoice, over_limit, "
        "card_unusable, btcpay_refused, btcpay_refused_expiry when the invoice expires sooner "
        "than the pull payment's BOLT11Expiration allows, btcpay_unavailable).",
        labels=("store", "outcome"),
        area="taps",
        source="counters callbacks",
    ),
    MetricSpec(
        "flash_btcpay_callbacks_total",
        "counter",
        "Callbacks of taps forwarded to BTCPay's own Boltcard endpoint, by store and BTCPay's "
        "answer (ok, btcpay_refused, btcpay_error); store is empty when the card was not "
        "identified.",
        labels=("store", "outcome"),
        area="taps",
        source="counters btcpay_callbacks",
    ),
    # --- cards
    MetricSpec(
        "flash_active_cards",
        "gauge",
        "Distinct cards with a payout in the last hour, day or 30 days (window), by store.",
        labels=("store", "window"),
        area="cards",
        source="boltcards.last_payout_at (indexed per store)",
    ),
    MetricSpec(
        "flash_card_payouts_total",
        "counter",
        "Payouts collected by one card, for the top K cards by recent activity only; card is "
        "the card's alias or a short prefix of its id, never its UID.",
        labels=("store", "card"),
        area="cards",
        source="card_rollups, summed over days",
    ),
    MetricSpec(
        "flash_card_value_sats_total",
        "counter",
        "Value of the payouts collected by one card, in satoshis (top K cards only).",
        labels=("store", "card"),
        unit="sats",
        area="cards",
        source="card_rollups, summed over days",
    ),
    MetricSpec(
        "flash_card_taps_total",
        "counter",
        "Taps of one card, accepted or refused (top K cards only).",
        labels=("store", "card"),
        area="cards",
        source="card_rollups, summed over days",
    ),
    MetricSpec(
        "flash_card_refused_taps_total",
        "counter",
        "Refused taps of one card (top K cards only).",
        labels=("store", "card"),
        area="cards",
        source="card_rollups, summed over days",
    ),
    MetricSpec(
        "flash_card_last_used_timestamp_seconds",
        "gauge",
        "Unix time of one card's last use (top K cards only).",
        labels=("store", "card"),
        unit="seconds",
        area="cards",
        source="boltcards.last_used_at and card_rollups",
    ),
    # --- BTCPay webhooks and reconciles
    MetricSpec(
        "flash_webhook_events_total",
        "counter",
        "BTCPay webhook deliveries recorded (each delivery id once), by store and event type.",
        labels=("store", "event"),
        area="btcpay",
        source="counters webhook_events",
    ),
    MetricSpec(
        "flash_reconcile_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful full reconcile with BTCPay, by store; "
        "0 when none has succeeded yet.",
        labels=S,
        unit="seconds",
        area="btcpay",
        source="sync_state.last_success_at",
    ),
    MetricSpec(
        "flash_newest_event_age_seconds",
        "gauge",
        "Seconds since the newest payout event (gateway, webhook or reconcile) reached the "
        "ledger, by store; absent for a store with no event yet.",
        labels=S,
        unit="seconds",
        area="btcpay",
        source="payout_events.received_at (indexed per store)",
    ),
    # --- scheduled reports
    MetricSpec(
        "flash_report_sends_total",
        "counter",
        "Reports delivered, by store and channel (email, webhook): the scheduled ones and "
        "those sent with `reports send-now`.",
        labels=("store", "channel"),
        area="reports",
        source="counters report_sends",
    ),
    MetricSpec(
        "flash_report_send_failures_total",
        "counter",
        "Failed attempts at sending a report, by store and channel; a scheduled report is "
        "tried again with backoff until its last attempt.",
        labels=("store", "channel"),
        area="reports",
        source="counters report_send_failures",
    ),
    MetricSpec(
        "flash_report_abandoned_total",
        "counter",
        "Scheduled reports given up after their last failed attempt (not delivered), by store "
        "and channel.",
        labels=("store", "channel"),
        area="reports",
        source="counters report_abandoned",
    ),
    # --- HTTP listeners (direct instrumentation, process-wide)
    MetricSpec(
        "flash_http_requests_total",
        "counter",
        "HTTP requests answered, by listener (gateway, api, metrics), method, route template "
        "and status code.",
        labels=("listener", "method", "route", "code"),
        area="http",
        source="request middleware of each listener",
    ),
    MetricSpec(
        "flash_http_request_duration_seconds",
        "histogram",
        "Seconds to answer an HTTP request, by listener, method and route template.",
        labels=("listener", "method", "route"),
        unit="seconds",
        area="http",
        source="request middleware of each listener",
    ),
    MetricSpec(
        "flash_http_requests_in_flight",
        "gauge",
        "HTTP requests being answered now, by listener.",
        labels=("listener",),
        area="http",
        source="request middleware of each listener",
    ),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}

AREAS: tuple[tuple[str, str], ...] = (
    ("exporter", "The exporter"),
    ("stores", "Stores"),
    ("payouts", "Payouts"),
    ("taps", "Taps"),
    ("cards", "Cards"),
    ("btcpay", "BTCPay webhooks and reconciles"),
    ("reports", "Scheduled reports"),
    ("http", "HTTP listeners"),
)


def spec(name: str) -> MetricSpec:
    """The spec of one family, by its PromQL name."""
    return BY_NAME[name]


def metrics_markdown() -> str:
    """The generated reference, docs/metrics.md."""
    lines = [
        "# Metrics",
        "",
        "<!-- Generated by `flash-payouts docs generate` from exporter/catalogue.py. "
        "Do not edit. -->",
        "",
        "Every family the monitor exposes on its metrics listener (`GET /metrics`, default",
        "`127.0.0.1:9810`). Counters are monotonic: erasing a card's data or pruning old taps",
        "never lowers one. The number of series is bounded by stores x label enums + K",
        "(`--metrics-top-cards`), whatever the number of payouts or cards.",
        "",
        "Known label values, exported as 0 before they first happen:",
        "",
        f"- `status`: {', '.join(STATUSES)}",
        f"- `outcome` of `flash_taps_total`: {', '.join(TAP_OUTCOMES)}",
        f"- `outcome` of `flash_callbacks_total`: {', '.join(CALLBACK_OUTCOMES)}",
        f"- `outcome` of `flash_btcpay_callbacks_total`: {', '.join(BTCPAY_CALLBACK_OUTCOMES)}",
        f"- `event`: {', '.join(WEBHOOK_EVENTS)}",
        f"- `window`: {', '.join(w for w, _ in ACTIVE_WINDOWS)}",
        f"- `listener`: {', '.join(LISTENERS)}",
        f"- `channel`: {', '.join(REPORT_CHANNELS)}",
        "",
        "Outcomes come from `ledger/outcomes.py`, which the gateway's writers share; one outside",
        "these lists still appears as soon as the ledger first counts it.",
        "",
    ]
    for area, title in AREAS:
        lines += [
            f"## {title}",
            "",
            "| name | type | unit | labels | meaning | from |",
            "|---|---|---|---|---|---|",
        ]
        for s in CATALOGUE:
            if s.area != area:
                continue
            labels = ", ".join(f"`{label}`" for label in s.labels) or "-"
            lines.append(
                f"| `{s.name}` | {s.type} | {s.unit or '-'} | {labels} | "
                f"{s.help.replace('|', '/')} | {s.source or '-'} |"
            )
        lines.append("")
    return "\n".join(lines)
