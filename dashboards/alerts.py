"""Alert rules, defined once and rendered twice: for Grafana's file provisioning and for Prometheus.

Each rule is a PromQL *value* query (one series per store, or per store and card), a comparison
with a threshold and a hold time. Prometheus gets ``(value) > threshold``; Grafana gets the value
query, a reduce step and a threshold step, in the documented provisioning file format (written
here rather than with grafanalib's alert classes, whose shape Grafana's file provisioning
rejects). Each rule carries its own promtool test case: a series that must fire and one that
must stay silent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import CARDS_UID, HEALTH_UID, OVERVIEW_UID, PROMETHEUS_UID, board_path
from .provisioning import SCRAPE_JOB

# The rules' own folder. Grafana's rule provisioning names a folder by its title and creates it
# with a uid of its own, before any dashboard is provisioned; sharing the boards' folder title
# would make the boards' provider (folder uid flash-payouts) fail to create its folder.
FOLDER = "Flash Payouts alerts"
DEFAULT_GRAFANA_URL = "http://localhost:3000"
DEFAULT_RUNBOOK_URL = "docs/user-guide.md"
WEBHOOK_CONTACT = "flash-oncall-webhook"


@dataclass(frozen=True)
class Thresholds:
    """The generator's settings for the rules: windows, limits and hold times."""

    replay_window: str = "10m"
    replays: int = 0  # fire above this many replayed counters in the window
    bad_mac_window: str = "5m"
    bad_macs: int = 4
    unknown_card_window: str = "15m"
    unknown_card_taps: int = 2
    card_tap_window: str = "5m"
    card_taps: int = 10  # taps of one card in the window
    card_value_sats_per_hour: int = 500_000
    limit_window: str = "30m"
    limit_refusals: int = 2
    btcpay_refusal_window: str = "10m"
    btcpay_refusals: int = 3  # card claims BTCPay refused in the window, whatever the reason
    failure_window: str = "1h"
    failure_ratio: float = 0.2
    failure_min_finished: int = 5  # no ratio alert on fewer finished payouts than this
    stuck_window: str = "30m"
    stuck_for: str = "15m"
    webhook_silence_window: str = "30m"
    reconcile_max_age_seconds: int = 1800
    down_for: str = "2m"
    report_failure_window: str = "1h"
    grafana_url: str = DEFAULT_GRAFANA_URL  # where the alerts' links to the boards point
    runbook_url: str = DEFAULT_RUNBOOK_URL  # the user guide; each rule links to its section


@dataclass(frozen=True)
class Case:
    """A promtool case: series at a 1m interval, evaluated at ``eval_minutes``.

    ``series`` maps a selector to its values in promtool's notation; the alert must fire with
    exactly ``fires`` (the labels of the bad series) and never for the good series.
    """

    series: Mapping[str, str]
    eval_minutes: int
    fires: Mapping[str, str]


@dataclass(frozen=True)
class Rule:
    name: str  # the alertname
    uid: str
    title: str
    group: str
    value: str  # PromQL: the measured value, one series per store (or store and card)
    op: str  # ">" or "<"
    threshold: float
    hold: str  # how long the condition must last ("for")
    severity: str
    summary: str
    description: str  # Go template; names the store or card through $labels
    dashboard_uid: str
    panel_title: str
    lookback_seconds: int
    case: Case
    no_data: str = "OK"
    link_vars: Sequence[str] = field(default=("store",))

    @property
    def expr(self) -> str:
        return f"({self.value}) {self.op} {_num(self.threshold)}"

    def dashboard_url(self, grafana_url: str) -> str:
        params = "&".join(f"var-{v}={{{{ $labels.{v} }}}}" for v in self.link_vars)
        return f"{grafana_url.rstrip('/')}{board_path(self.dashboard_uid)}?{params}"


def runbook_anchor(title: str) -> str:
    """The anchor a Markdown renderer gives the heading ``title`` (GitHub's rule)."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def _taps(outcome: str, window: str) -> str:
    """Taps with ``outcome`` (a regular expression, such as ``a|b``) in ``window``, by store."""
    match = "=~" if "|" in outcome else "="
    return f'sum by (store) (increase(flash_taps_total{{outcome{match}"{outcome}"}}[{window}]))'


def _tap_series(outcome: str, bad: str, good: str) -> dict[str, str]:
    return {
        f'flash_taps_total{{store="bad",outcome="{outcome}"}}': bad,
        f'flash_taps_total{{store="good",outcome="{outcome}"}}': good,
    }


def rules(t: Thresholds | None = None) -> list[Rule]:
    t = t or Thresholds()
    store = "store {{ $labels.store }}"
    card = "card {{ $labels.card }} of store {{ $labels.store }}"
    fw = t.failure_window
    finished = (
        f"sum by (store) (increase(flash_payouts_failed_total[{fw}])) + "
        f"sum by (store) (increase(flash_payouts_completed_total[{fw}]))"
    )
    sw = t.stuck_window
    moved = (
        f"sum by (store) (increase(flash_payouts_completed_total[{sw}])) + "
        f"sum by (store) (increase(flash_payouts_failed_total[{sw}]))"
    )
    ww = t.webhook_silence_window
    bw = t.btcpay_refusal_window
    rw = t.report_failure_window
    return [
        Rule(
            name="FlashReplayedCounter",
            uid="flash-replayed-counter",
            title="Replayed Boltcard counter",
            group="boltcards",
            value=_taps("replay", t.replay_window),
            op=">",
            threshold=t.replays,
            hold="0s",
            severity="critical",
            summary=f"Replayed Boltcard counter at {store}",
            description=f"A tap at {store} reused a counter the card had already sent: a "
            "captured tap being replayed, or a cloned card. More than "
            f"{t.replays} in {t.replay_window}. Check the refused taps for the card.",
            dashboard_uid=CARDS_UID,
            panel_title="Refused taps",
            lookback_seconds=_seconds(t.replay_window),
            case=Case(
                _tap_series("replay", "0 0 0 0 0 1 1 1 1 1 1", "0x10"),
                8,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashBadMacBurst",
            uid="flash-bad-mac-burst",
            title="Burst of bad Boltcard MACs",
            group="boltcards",
            value=_taps("bad_mac", t.bad_mac_window),
            op=">",
            threshold=t.bad_macs,
            hold="0s",
            severity="critical",
            summary=f"Burst of taps with a bad MAC at {store}",
            description=f"More than {t.bad_macs} taps in {t.bad_mac_window} at {store} carried "
            "a MAC that does not verify: forged or tampered tap URLs.",
            dashboard_uid=CARDS_UID,
            panel_title="Refused taps by reason",
            lookback_seconds=_seconds(t.bad_mac_window),
            case=Case(
                _tap_series("bad_mac", "0+2x10", "0 0 0 0 0 0 0 1 1 1 1"), 10, {"store": "bad"}
            ),
        ),
        Rule(
            name="FlashUnknownCardTaps",
            uid="flash-unknown-card-taps",
            title="Taps from unknown cards",
            group="boltcards",
            # unknown_card: a known key reads the tap but no card has its UID; bad_p: no key
            # the gateway knows reads it at all (a card programmed elsewhere, or made up).
            value=_taps("unknown_card|bad_p", t.unknown_card_window),
            op=">",
            threshold=t.unknown_card_taps,
            hold="0s",
            severity="warning",
            summary="Taps from cards no store knows",
            description=f"More than {t.unknown_card_taps} taps in {t.unknown_card_window} came "
            "from cards the gateway does not know, or carried a p no key of it reads (store "
            "label '{{ $labels.store }}', empty when no store recognised the card): probing, "
            "or cards not yet imported.",
            dashboard_uid=CARDS_UID,
            panel_title="Refused taps",
            lookback_seconds=_seconds(t.unknown_card_window),
            # Unreadable taps alone fire it (the unknown-card series stays flat); the good
            # store's one stray unreadable tap does not.
            case=Case(
                {
                    'flash_taps_total{store="bad",outcome="bad_p"}': "0+1x20",
                    'flash_taps_total{store="bad",outcome="unknown_card"}': "0x20",
                    'flash_taps_total{store="good",outcome="bad_p"}': "0x10 1x9",
                    'flash_taps_total{store="good",outcome="unknown_card"}': "0x20",
                },
                20,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashCardTappingFast",
            uid="flash-card-tapping-fast",
            title="One card tapping too fast",
            group="boltcards",
            value=f"sum by (store, card) (increase(flash_card_taps_total[{t.card_tap_window}]))",
            op=">",
            threshold=t.card_taps,
            hold="0s",
            severity="warning",
            summary=f"Boltcard tapping fast: {card}",
            description=f"The {card} was tapped more than {t.card_taps} times in "
            f"{t.card_tap_window}.",
            dashboard_uid=CARDS_UID,
            panel_title="Usage per card",
            lookback_seconds=_seconds(t.card_tap_window),
            case=Case(
                {
                    'flash_card_taps_total{store="s1",card="bad"}': "0+5x10",
                    'flash_card_taps_total{store="s1",card="good"}': "0+1x10",
                },
                10,
                {"store": "s1", "card": "bad"},
            ),
        ),
        Rule(
            name="FlashCardValueHour",
            uid="flash-card-value-hour",
            title="One card's value in an hour above the limit",
            group="boltcards",
            value="sum by (store, card) (increase(flash_card_value_sats_total[1h]))",
            op=">",
            threshold=t.card_value_sats_per_hour,
            hold="0s",
            severity="critical",
            summary=f"High value collected by {card}",
            description=f"The {card} collected more than {t.card_value_sats_per_hour} sats in "
            "the last hour.",
            dashboard_uid=CARDS_UID,
            panel_title="Usage per card",
            lookback_seconds=3600,
            case=Case(
                {
                    'flash_card_value_sats_total{store="s1",card="bad"}': "0+20000x70",
                    'flash_card_value_sats_total{store="s1",card="good"}': "0+1000x70",
                },
                70,
                {"store": "s1", "card": "bad"},
            ),
        ),
        Rule(
            name="FlashRepeatedLimitRefusals",
            uid="flash-repeated-limit-refusals",
            title="Repeated limit refusals",
            group="boltcards",
            value=_taps("limit", t.limit_window),
            op=">",
            threshold=t.limit_refusals,
            hold="0s",
            severity="warning",
            summary=f"Repeated limit refusals at {store}",
            description=f"More than {t.limit_refusals} taps in {t.limit_window} at {store} were "
            "refused for a card's per-payout or daily limit: a card being drained, or limits "
            "set too low.",
            dashboard_uid=CARDS_UID,
            panel_title="Refused taps",
            lookback_seconds=_seconds(t.limit_window),
            case=Case(_tap_series("limit", "0+1x40", "0x40"), 40, {"store": "bad"}),
        ),
        Rule(
            name="FlashClaimsRefusedByBtcpay",
            uid="flash-claims-refused-by-btcpay",
            title="Card claims refused by BTCPay",
            group="boltcards",
            # Both kinds of card: the gateway's own (btcpay_refused, btcpay_refused_expiry) and
            # BTCPay's, whose callbacks the gateway forwards (btcpay_refused). The second gets
            # an outcome of its own first: the two families share their label sets, and `or`
            # keeps only one of two series with the same labels.
            value="sum by (store) ("
            f'increase(flash_callbacks_total{{outcome=~"btcpay_refused.*"}}[{bw}]) or '
            'label_replace(increase(flash_btcpay_callbacks_total{outcome="btcpay_refused"}'
            f'[{bw}]), "outcome", "btcpay_card_refused", "", ""))',
            op=">",
            threshold=t.btcpay_refusals,
            hold="0s",
            severity="warning",
            summary=f"BTCPay refusing card claims at {store}",
            description=f"More than {t.btcpay_refusals} card claims in {bw} "
            f"at {store} were refused by BTCPay, whatever the reason: cards tap fine but pay "
            "nothing. A pull payment whose BOLT11Expiration is above 0 refuses every wallet "
            "invoice (outcome btcpay_refused_expiry); see the callbacks by outcome.",
            dashboard_uid=CARDS_UID,
            panel_title="Callbacks by outcome",
            lookback_seconds=_seconds(t.btcpay_refusal_window),
            case=Case(
                {
                    'flash_callbacks_total{store="bad",outcome="btcpay_refused_expiry"}': "0+1x20",
                    'flash_btcpay_callbacks_total{store="bad",outcome="btcpay_refused"}': "0+1x20",
                    'flash_callbacks_total{store="good",outcome="btcpay_refused"}': "0x20",
                    'flash_callbacks_total{store="good",outcome="paid"}': "0+5x20",
                },
                15,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashPayoutFailureRatio",
            uid="flash-payout-failure-ratio",
            title="Payout failure ratio",
            group="service",
            value=f"sum by (store) (increase(flash_payouts_failed_total[{fw}])) "
            f"/ ({finished} >= {t.failure_min_finished})",
            op=">",
            threshold=t.failure_ratio,
            hold="10m",
            severity="warning",
            summary=f"Payouts failing at {store}",
            description=f"More than {t.failure_ratio:.0%} of the payouts that finished in the "
            f"last {fw} at {store} failed (at least {t.failure_min_finished} finished).",
            dashboard_uid=OVERVIEW_UID,
            panel_title="Success rate",
            lookback_seconds=_seconds(fw),
            case=Case(
                {
                    'flash_payouts_failed_total{store="bad"}': "0+1x80",
                    'flash_payouts_completed_total{store="bad"}': "0+1x80",
                    'flash_payouts_failed_total{store="good"}': "0x80",
                    'flash_payouts_completed_total{store="good"}': "0+2x80",
                },
                75,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashPayoutsStuckProcessing",
            uid="flash-payouts-stuck-processing",
            title="Payouts stuck in processing",
            group="service",
            value=f'sum by (store) (flash_payouts{{status="Processing"}}) '
            f"and on (store) ({moved} == 0)",
            op=">",
            threshold=0,
            hold=t.stuck_for,
            severity="warning",
            summary=f"Payouts stuck in Processing at {store}",
            description=f"{store} has payouts in Processing and none completed or failed in "
            f"{sw}: BTCPay's payment processor may be stuck.",
            dashboard_uid=OVERVIEW_UID,
            panel_title="Processing now",
            lookback_seconds=_seconds(sw),
            case=Case(
                {
                    'flash_payouts{store="bad",status="Processing"}': "3x70",
                    'flash_payouts_completed_total{store="bad"}': "0x70",
                    'flash_payouts_failed_total{store="bad"}': "0x70",
                    'flash_payouts{store="good",status="Processing"}': "3x70",
                    'flash_payouts_completed_total{store="good"}': "0+1x70",
                    'flash_payouts_failed_total{store="good"}': "0x70",
                },
                60,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashWebhooksSilent",
            uid="flash-webhooks-silent",
            title="Webhooks silent while payouts are created",
            group="service",
            value=f"sum by (store) (increase(flash_payouts_created_total[{ww}])) "
            f"unless on (store) (sum by (store) (increase(flash_webhook_events_total[{ww}])) > 0)",
            op=">",
            threshold=0,
            hold="5m",
            severity="warning",
            summary=f"No BTCPay webhooks from {store}",
            description=f"Payouts were created at {store} in the last {ww} but no BTCPay "
            "webhook arrived: check the store's webhook in BTCPay (URL, secret, deliveries).",
            dashboard_uid=HEALTH_UID,
            panel_title="Webhook events by type",
            lookback_seconds=_seconds(ww),
            case=Case(
                {
                    'flash_payouts_created_total{store="bad"}': "0+1x50",
                    'flash_webhook_events_total{store="bad",event="PayoutCreated"}': "0x50",
                    'flash_payouts_created_total{store="good"}': "0+1x50",
                    'flash_webhook_events_total{store="good",event="PayoutCreated"}': "0+1x50",
                },
                45,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashReconcileFailing",
            uid="flash-reconcile-failing",
            title="Reconcile with BTCPay failing",
            group="service",
            value="time() - max by (store) (flash_reconcile_last_success_timestamp_seconds)",
            op=">",
            threshold=t.reconcile_max_age_seconds,
            hold="5m",
            severity="warning",
            summary=f"Reconcile with BTCPay failing for {store}",
            description=f"The last successful reconcile of {store} is more than "
            f"{t.reconcile_max_age_seconds} s old (or none has succeeded): payouts that "
            "webhooks missed are not being caught up.",
            dashboard_uid=HEALTH_UID,
            panel_title="Reconcile age",
            lookback_seconds=300,
            case=Case(
                {
                    'flash_reconcile_last_success_timestamp_seconds{store="bad"}': "60x80",
                    'flash_reconcile_last_success_timestamp_seconds{store="good"}': "0+60x80",
                },
                70,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashReportSendsFailing",
            uid="flash-report-sends-failing",
            title="Scheduled report sends failing",
            group="service",
            value=f"sum by (store) (increase(flash_report_send_failures_total[{rw}]))",
            op=">",
            threshold=0,
            hold="0s",
            severity="warning",
            summary=f"Scheduled reports of {store} failing to send",
            description=f"Sending a scheduled report of {store} (by email or to its webhook) "
            f"failed in the last {rw}. It is tried again with backoff, then given up "
            "(flash_report_abandoned_total); check the SMTP server or the webhook target shown "
            "by `flash-payouts reports list`.",
            dashboard_uid=HEALTH_UID,
            panel_title="Report sends",
            lookback_seconds=_seconds(rw),
            case=Case(
                {
                    'flash_report_send_failures_total{store="bad",channel="email"}': "0x10 2x20",
                    'flash_report_send_failures_total{store="good",channel="email"}': "0x30",
                },
                15,
                {"store": "bad"},
            ),
        ),
        Rule(
            name="FlashLedgerDown",
            uid="flash-ledger-down",
            title="Ledger unreachable",
            group="service",
            value="min by (instance) (flash_up)",
            op="<",
            threshold=1,
            hold=t.down_for,
            severity="critical",
            summary="Ledger unreachable from {{ $labels.instance }}",
            description="The exporter at {{ $labels.instance }} cannot read the ledger within "
            "the scrape deadline: payouts and taps are not being seen, and the gateway may be "
            "failing too.",
            dashboard_uid=HEALTH_UID,
            panel_title="Ledger",
            lookback_seconds=300,
            case=Case(
                {'flash_up{instance="bad"}': "0x10", 'flash_up{instance="good"}': "1x10"},
                5,
                {"instance": "bad"},
            ),
            link_vars=(),
        ),
        Rule(
            name="FlashExporterDown",
            uid="flash-exporter-down",
            title="Exporter down",
            group="service",
            value=f'min by (instance) (up{{job="{SCRAPE_JOB}"}})',
            op="<",
            threshold=1,
            hold=t.down_for,
            severity="critical",
            summary="Flash exporter {{ $labels.instance }} down",
            description="Prometheus cannot scrape the Flash metrics listener at "
            "{{ $labels.instance }}: every other Flash alert is blind.",
            dashboard_uid=HEALTH_UID,
            panel_title="Exporter",
            lookback_seconds=300,
            case=Case(
                {
                    f'up{{job="{SCRAPE_JOB}",instance="bad"}}': "0x10",
                    f'up{{job="{SCRAPE_JOB}",instance="good"}}': "1x10",
                },
                5,
                {"instance": "bad"},
            ),
            no_data="Alerting",
            link_vars=(),
        ),
    ]


GROUP_TITLES = {"boltcards": "Flash Boltcards", "service": "Flash service"}


def _annotations(rule: Rule, t: Thresholds) -> dict[str, str]:
    return {
        "summary": rule.summary,
        "description": rule.description,
        "dashboard": rule.dashboard_url(t.grafana_url),
        "runbook_url": f"{t.runbook_url}#{runbook_anchor(rule.title)}",
    }


def render_template(template: str, labels: Mapping[str, str]) -> str:
    """Expand ``{{ $labels.x }}`` the way Prometheus does, for the promtool expectations."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


# --- Prometheus


def prometheus_rules(t: Thresholds | None = None) -> dict[str, Any]:
    t = t or Thresholds()
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules(t):
        groups.setdefault(rule.group, []).append(
            {
                "alert": rule.name,
                "expr": rule.expr,
                "for": rule.hold,
                "labels": {"severity": rule.severity},
                "annotations": _annotations(rule, t),
            }
        )
    return {
        "groups": [
            {"name": GROUP_TITLES[name], "interval": "30s", "rules": items}
            for name, items in groups.items()
        ]
    }


def promtool_tests(rule_file: str, t: Thresholds | None = None) -> dict[str, Any]:
    """One test group per rule: the bad series fires, the good one stays silent."""
    t = t or Thresholds()
    tests = []
    for rule in rules(t):
        labels = {"severity": rule.severity, **rule.case.fires}
        tests.append(
            {
                "name": f"{rule.name} fires on the bad series only",
                "interval": "1m",
                "input_series": [
                    {"series": selector, "values": values}
                    for selector, values in rule.case.series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{rule.case.eval_minutes}m",
                        "alertname": rule.name,
                        "exp_alerts": [
                            {
                                "exp_labels": labels,
                                "exp_annotations": {
                                    k: render_template(v, labels)
                                    for k, v in _annotations(rule, t).items()
                                },
                            }
                        ],
                    }
                ],
            }
        )
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


# --- Grafana


def _grafana_rule(rule: Rule, t: Thresholds, panel_ids: Mapping[tuple[str, str], int]) -> dict:
    expr_ds = {"type": "__expr__", "uid": "__expr__"}
    evaluator = "gt" if rule.op == ">" else "lt"
    # The rule's panel as Grafana's own export names it: dashboardUid and panelId fields.
    return {
        "uid": rule.uid,
        "title": rule.title,
        "condition": "C",
        "dashboardUid": rule.dashboard_uid,
        "panelId": panel_ids[rule.dashboard_uid, rule.panel_title],
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": max(rule.lookback_seconds, 60), "to": 0},
                "datasourceUid": PROMETHEUS_UID,
                "model": {
                    "refId": "A",
                    "expr": rule.value,
                    "instant": True,
                    "range": False,
                    "intervalMs": 1000,
                    "maxDataPoints": 43200,
                    "datasource": {"type": "prometheus", "uid": PROMETHEUS_UID},
                },
            },
            {
                "refId": "B",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": "last",
                    "settings": {"mode": "dropNN"},
                    "datasource": expr_ds,
                },
            },
            {
                "refId": "C",
                "relativeTimeRange": {"from": 0, "to": 0},
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [
                        {"evaluator": {"type": evaluator, "params": [float(rule.threshold)]}}
                    ],
                    "datasource": expr_ds,
                },
            },
        ],
        "noDataState": rule.no_data,
        "execErrState": "Error",
        "for": rule.hold,
        "annotations": _annotations(rule, t),
        "labels": {"severity": rule.severity, "alertname_prometheus": rule.name},
        "isPaused": False,
    }


def grafana_rules(
    panel_ids: Mapping[tuple[str, str], int], t: Thresholds | None = None
) -> dict[str, Any]:
    """The alert rule provisioning file; ``panel_ids`` maps (board uid, panel title) to an id."""
    t = t or Thresholds()
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules(t):
        groups.setdefault(rule.group, []).append(_grafana_rule(rule, t, panel_ids))
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": GROUP_TITLES[name],
                "folder": FOLDER,
                "interval": "1m",
                "rules": items,
            }
            for name, items in groups.items()
        ],
    }


def grafana_contact_points(webhook_env: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "contactPoints": [
            {
                "orgId": 1,
                "name": WEBHOOK_CONTACT,
                "receivers": [
                    {
                        "uid": WEBHOOK_CONTACT,
                        "type": "webhook",
                        "disableResolveMessage": False,
                        # Expanded by Grafana from its environment when it reads this file.
                        "settings": {"url": f"${webhook_env}", "httpMethod": "POST"},
                    }
                ],
            }
        ],
    }


def grafana_policies() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "policies": [
            {
                "orgId": 1,
                "receiver": WEBHOOK_CONTACT,
                "group_by": ["grafana_folder", "alertname", "store"],
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "4h",
                "routes": [
                    {
                        "receiver": WEBHOOK_CONTACT,
                        "object_matchers": [["severity", "=", "critical"]],
                        "group_wait": "10s",
                        "repeat_interval": "1h",
                    }
                ],
            }
        ],
    }
