"""Collectors, one per area, building fresh metric families from one ledger snapshot.

A collector never touches the database: the scrape handler reads a ``Snapshot`` first (async,
under the scrape deadline) and these turn it into families. Label sets known to exist (every
store x status, outcome, event type, window) are exported as 0 before they first happen, so
rate() and alerts have a series to work with from the start.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import Decimal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ledger.readings import CardReading, Snapshot
from ledger.reports import ABANDONED_COUNTER, FAILURES_COUNTER, SENDS_COUNTER
from ledger.rollups import COMPLETION_BUCKETS
from ledger.status import STATUSES

from .catalogue import (
    ACTIVE_WINDOWS,
    BTCPAY_CALLBACK_OUTCOMES,
    CALLBACK_OUTCOMES,
    REPORT_CHANNELS,
    TAP_OUTCOMES,
    WEBHOOK_EVENTS,
    spec,
)

CARD_PREFIX_LEN = 8


def family(name: str) -> Metric:
    """An empty family for the catalogue entry ``name``, with its labels, help and unit."""
    s = spec(name)
    labels = list(s.labels)
    if s.type == "counter":
        return CounterMetricFamily(s.family, s.help, labels=labels, unit=s.unit)
    if s.type == "gauge":
        return GaugeMetricFamily(s.family, s.help, labels=labels, unit=s.unit)
    return HistogramMetricFamily(s.family, s.help, labels=labels, unit=s.unit)


def known_stores(snap: Snapshot) -> list[str]:
    """Connected stores: the ones every enum is zero-filled for."""
    return [s.id for s in snap.stores]


class SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def counters(self, name: str) -> dict[tuple[str, str], float]:
        """(store, label) -> value of one ledger counter."""
        return {(c.store_id, c.label): float(c.value) for c in self.snap.counters if c.name == name}

    def per_store(self, name: str) -> dict[str, float]:
        values = {store: 0.0 for store in known_stores(self.snap)}
        for (store, _label), value in self.counters(name).items():
            values[store] = values.get(store, 0.0) + value
        return values

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError


class StoreCollector(SnapshotCollector):
    def collect(self) -> Iterator[Metric]:
        info = family("flash_store_info")
        for s in self.snap.stores:
            info.add_metric([s.id, s.name, "true" if s.card_tracking else "false"], 1)
        yield info


class PayoutCollector(SnapshotCollector):
    def collect(self) -> Iterator[Metric]:
        yield from self.now()
        yield from self.over_time()
        yield self.completion()

    def now(self) -> Iterator[Metric]:
        count: dict[tuple[str, str], int] = {
            (store, status): 0 for store in known_stores(self.snap) for status in STATUSES
        }
        sats = dict.fromkeys(count, 0)
        amount: dict[tuple[str, str, str], Decimal] = {}
        for p in self.snap.payouts:
            for status in STATUSES:
                count.setdefault((p.store_id, status), 0)
                sats.setdefault((p.store_id, status), 0)
                if p.currency:
                    amount.setdefault((p.store_id, status, p.currency), Decimal(0))
            count[p.store_id, p.status] += p.count
            sats[p.store_id, p.status] += p.amount_sats
            if p.currency:
                amount[p.store_id, p.status, p.currency] += p.amount
        payouts = family("flash_payouts")
        value = family("flash_payouts_value_sats")
        original = family("flash_payouts_amount")
        for key in sorted(count):
            payouts.add_metric(list(key), count[key])
            value.add_metric(list(key), sats[key])
        for key3 in sorted(amount):
            original.add_metric(list(key3), float(amount[key3]))
        yield from (payouts, value, original)

    def over_time(self) -> Iterator[Metric]:
        for metric, counter in (
            ("flash_payouts_created_total", "payouts_created"),
            ("flash_payouts_completed_total", "payouts_completed"),
            ("flash_payouts_failed_total", "payouts_failed"),
            ("flash_payouts_created_value_sats_total", "sats_created"),
            ("flash_payouts_completed_value_sats_total", "sats_completed"),
        ):
            fam = family(metric)
            for store, value in sorted(self.per_store(counter).items()):
                fam.add_metric([store], value)
            yield fam
        amount = family("flash_payouts_created_amount_total")
        for (store, currency), value in sorted(self.counters("original_amount_created").items()):
            amount.add_metric([store, currency], value)
        yield amount

    def completion(self) -> Metric:
        buckets = self.counters("completion_seconds_bucket")
        sums = self.per_store("completion_seconds_sum")
        stores = sorted(set(sums) | {store for store, _ in buckets})
        hist = family("flash_payout_completion_seconds")
        for store in stores:
            # The ledger labels bounds as it bumps them ("5", "21600", "+Inf"); the exposition
            # uses Go float strings ("5.0") like every other Prometheus histogram.
            series = [
                (floatToGoString(bound), buckets.get((store, _ledger_le(bound)), 0.0))
                for bound in COMPLETION_BUCKETS
            ]
            series.append(("+Inf", buckets.get((store, "+Inf"), 0.0)))
            hist.add_metric([store], series, sum_value=sums.get(store, 0.0))
        return hist


def _ledger_le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


class TapCollector(SnapshotCollector):
    """Taps and their callbacks by outcome, every known outcome zero-filled per store."""

    FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("flash_taps_total", "taps", TAP_OUTCOMES),
        ("flash_callbacks_total", "callbacks", CALLBACK_OUTCOMES),
        ("flash_btcpay_callbacks_total", "btcpay_callbacks", BTCPAY_CALLBACK_OUTCOMES),
    )

    def collect(self) -> Iterator[Metric]:
        stores = known_stores(self.snap)
        for metric, counter, outcomes in self.FAMILIES:
            values = {(store, outcome): 0.0 for store in stores for outcome in outcomes}
            values.update(self.counters(counter))
            fam = family(metric)
            for key, value in sorted(values.items()):
                fam.add_metric(list(key), value)
            yield fam


class WebhookCollector(SnapshotCollector):
    def collect(self) -> Iterator[Metric]:
        values = {
            (store, event): 0.0 for store in known_stores(self.snap) for event in WEBHOOK_EVENTS
        }
        values.update(self.counters("webhook_events"))
        events = family("flash_webhook_events_total")
        for key, value in sorted(values.items()):
            events.add_metric(list(key), value)
        yield events


class ReportCollector(SnapshotCollector):
    """Report sends, failed attempts and reports given up, every channel zero-filled per store."""

    FAMILIES: tuple[tuple[str, str], ...] = (
        ("flash_report_sends_total", SENDS_COUNTER),
        ("flash_report_send_failures_total", FAILURES_COUNTER),
        ("flash_report_abandoned_total", ABANDONED_COUNTER),
    )

    def collect(self) -> Iterator[Metric]:
        stores = known_stores(self.snap)
        for metric, counter in self.FAMILIES:
            values = {(store, channel): 0.0 for store in stores for channel in REPORT_CHANNELS}
            values.update(self.counters(counter))
            fam = family(metric)
            for key, value in sorted(values.items()):
                fam.add_metric(list(key), value)
            yield fam


class FreshnessCollector(SnapshotCollector):
    def collect(self) -> Iterator[Metric]:
        reconcile = family("flash_reconcile_last_success_timestamp_seconds")
        last = {store: None for store in known_stores(self.snap)} | self.snap.last_reconcile
        for store, at in sorted(last.items()):
            reconcile.add_metric([store], at.timestamp() if at is not None else 0.0)
        yield reconcile

        age = family("flash_newest_event_age_seconds")
        for store, at in sorted(self.snap.newest_event.items()):
            if at is not None:
                age.add_metric([store], max(0.0, (self.snap.now - at).total_seconds()))
        yield age


class CardCollector(SnapshotCollector):
    def collect(self) -> Iterator[Metric]:
        active = family("flash_active_cards")
        for store in known_stores(self.snap):
            windows = self.snap.active_cards.get(store, {})
            for window, _seconds in ACTIVE_WINDOWS:
                active.add_metric([store, window], windows.get(window, 0))
        yield active

        age = family("flash_exporter_cached_readings_age_seconds")
        slow = self.snap.slow
        age.add_metric([], max(0.0, (self.snap.now - slow.at).total_seconds()) if slow else 0.0)
        yield age

        payouts = family("flash_card_payouts_total")
        value = family("flash_card_value_sats_total")
        taps = family("flash_card_taps_total")
        refused = family("flash_card_refused_taps_total")
        last_used = family("flash_card_last_used_timestamp_seconds")
        for card, label in card_labels(self.snap.top_cards):
            labels = [card.store_id, label]
            payouts.add_metric(labels, card.payouts)
            value.add_metric(labels, card.amount_sats)
            taps.add_metric(labels, card.taps)
            refused.add_metric(labels, card.refused_taps)
            if card.last_used_at is not None:
                last_used.add_metric(labels, card.last_used_at.timestamp())
        yield from (payouts, value, taps, refused, last_used)


def card_labels(cards: list[CardReading]) -> list[tuple[CardReading, str]]:
    """Each card's ``card`` label: its alias, else a short prefix of its id; unique per store.

    Two cards sharing an alias would make duplicate series, which Prometheus rejects, so a
    repeated alias gets the id prefix appended.
    """
    wanted = [(c, (c.alias or "").strip() or c.card_id[:CARD_PREFIX_LEN]) for c in cards]
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for card, label in wanted:
        seen[card.store_id, label] += 1
    result: list[tuple[CardReading, str]] = []
    used: set[tuple[str, str]] = set()
    for card, base in wanted:
        label = base
        if seen[card.store_id, base] > 1:
            label = f"{base}~{card.card_id[:CARD_PREFIX_LEN]}"
        if (card.store_id, label) in used:  # ids sharing a prefix: the whole id is unique
            label = f"{base}~{card.card_id}"
        used.add((card.store_id, label))
        result.append((card, label))
    return result


AREA_COLLECTORS: tuple[type[SnapshotCollector], ...] = (
    StoreCollector,
    PayoutCollector,
    TapCollector,
    CardCollector,
    WebhookCollector,
    FreshnessCollector,
    ReportCollector,
)


class ExporterCollector:
    """The exporter's own health: ledger reachable, read time, scrapes and failures."""

    def __init__(self, up: bool, duration: float, scrapes: int, failures: int) -> None:
        self.up, self.duration, self.scrapes, self.failures = up, duration, scrapes, failures

    def collect(self) -> Iterator[Metric]:
        up = family("flash_up")
        up.add_metric([], 1 if self.up else 0)
        duration = family("flash_exporter_scrape_duration_seconds")
        duration.add_metric([], self.duration)
        scrapes = family("flash_exporter_scrapes_total")
        scrapes.add_metric([], self.scrapes)
        failures = family("flash_exporter_scrape_failures_total")
        failures.add_metric([], self.failures)
        yield from (up, duration, scrapes, failures)
