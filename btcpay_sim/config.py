"""Every knob of the simulator in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# BTCPay's automatic redelivery schedule: 10 s, 1 min, then six times 10 min.
BTCPAY_REDELIVERY_DELAYS: tuple[float, ...] = (10.0, 60.0, *(600.0,) * 6)


@dataclass(slots=True)
class ProgressDelays:
    """Seconds a Lightning payout spends in each step when auto-progress is on.

    Auto-approval itself is immediate, inside the claim, as in BTCPay.
    """

    start: float = 0.5  # AwaitingPayment -> InProgress (the payout processor picks it up)
    settle: float = 1.0  # InProgress -> Completed or Cancelled


@dataclass(slots=True)
class Faults:
    """Runtime faults; changed over HTTP with POST /_sim/faults."""

    latency: float = 0.0  # seconds added before every Greenfield answer
    fail_rate: float = 0.0  # fraction of Greenfield calls answered 503
    hang: bool = False  # Greenfield calls wait until hang is cleared or hang_timeout passes
    hang_timeout: float = 300.0
    drop_connections: bool = False  # Greenfield calls get their connection closed, no answer
    # Answers held back on their way out, after BTCPay read its data: a view that arrives late
    # and stale, as over a slow network.
    slow_answer_rate: float = 0.0
    slow_answer_delay: float = 0.5
    webhook_drop_rate: float = 0.0  # deliveries silently lost: never sent, never retried
    # Delivery attempts that fail on the way (no answer): BTCPay retries them in place, and the
    # webhook's later events wait behind them.
    webhook_fail_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0  # deliveries sent twice with the same deliveryId
    webhook_reorder_rate: float = 0.0  # deliveries held back and sent after later ones
    webhook_reorder_delay: float = 0.5  # seconds a held-back delivery waits

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with the given knobs changed; ValueError names an unknown or bad knob."""
        known = {f.name: f for f in fields(self)}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault knob: {name}")
            current = getattr(self, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            elif name.endswith("_rate") and value > 1:
                raise ValueError(f"{name} is a fraction between 0 and 1")
            values[name] = float(value) if not isinstance(current, bool) else value
        return replace(self, **values)


@dataclass(slots=True)
class SimConfig:
    network: str = "bcrt"  # BOLT11 network accepted in claims: bc, tb, tbs or bcrt
    public_url: str | None = None  # base of viewLink; defaults to the request's own origin
    # The API keys BTCPay knows, with their permissions ("unrestricted",
    # "btcpay.store.canviewpayouts:STOREID", ...). Any other key is a 401, as in BTCPay.
    api_keys: dict[str, list[str]] = field(default_factory=dict)
    # Kinder than BTCPay, only when asked for: an unknown key gets every permission.
    permissive_keys: bool = False
    # A new store's refundBOLT11Expiration (days): what a pull payment created without
    # BOLT11Expiration takes. BTCPay's default is 30.
    refund_bolt11_expiration_days: int = 30
    auto_progress: bool = True  # Lightning payouts move on their own after approval
    progress_delays: ProgressDelays = field(default_factory=ProgressDelays)
    # Fraction of Lightning payment attempts that fail: the payout goes back from InProgress
    # to AwaitingPayment and the processor tries again, as BTCPay's does.
    payment_failure_rate: float = 0.0
    # Fraction of payment attempts after which BTCPay cancels the payout (with an event): the
    # cases BTCPay cancels in (the invoice expired, the amount did not match).
    cancel_rate: float = 0.0
    silent_cancel_rate: float = 0.0  # fraction of approved payouts cancelled with NO event
    redelivery_delays: tuple[float, ...] = BTCPAY_REDELIVERY_DELAYS
    redelivery_scale: float = 1.0  # multiplies redelivery_delays; 0.001 in tests
    webhook_timeout: float = 10.0  # seconds to wait for a receiver's answer
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None  # seeds the random choices (cancel rates, faults, bulk data)
