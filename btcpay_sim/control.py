"""The /_sim control API: faults, settings, keys, bulk seeding and statistics (no auth)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from .bulk import BulkRequest, seed_payouts
from .config import ProgressDelays
from .errors import APIError
from .models import PAYOUT_STATES
from .sim import SIMULATOR, Simulator

routes = web.RouteTableDef()


def _sim(request: web.Request) -> Simulator:
    return request.app[SIMULATOR]


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise APIError("invalid-json", "The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise APIError("invalid-json", "The request body must be a JSON object")
    return body


@routes.get("/_sim/faults")
async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).faults.current.to_json())


@routes.post("/_sim/faults")
async def set_faults(request: web.Request) -> web.Response:
    try:
        faults = _sim(request).faults.update(await _body(request))
    except ValueError as exc:
        raise APIError("invalid-fault", str(exc)) from exc
    return web.json_response(faults.to_json())


def _settings(sim: Simulator) -> dict[str, Any]:
    config = sim.config
    return {
        "auto_progress": config.auto_progress,
        "progress_delays": {
            "start": config.progress_delays.start,
            "settle": config.progress_delays.settle,
        },
        "payment_failure_rate": config.payment_failure_rate,
        "cancel_rate": config.cancel_rate,
        "silent_cancel_rate": config.silent_cancel_rate,
        "redelivery_scale": config.redelivery_scale,
    }


@routes.get("/_sim/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(_settings(_sim(request)))


@routes.post("/_sim/settings")
async def set_settings(request: web.Request) -> web.Response:
    sim = _sim(request)
    body = await _body(request)
    unknown = set(body) - set(_settings(sim))
    if unknown:
        raise APIError("invalid-setting", f"unknown settings: {sorted(unknown)}")
    try:
        if "auto_progress" in body:
            if not isinstance(body["auto_progress"], bool):
                raise ValueError("auto_progress must be true or false")
            sim.config.auto_progress = body["auto_progress"]
        for name in ("payment_failure_rate", "cancel_rate", "silent_cancel_rate"):
            if name in body:
                sim.config.__setattr__(name, _number(body[name], name, upper=1.0))
        if "redelivery_scale" in body:
            sim.config.redelivery_scale = _number(body["redelivery_scale"], "redelivery_scale")
        if "progress_delays" in body:
            delays = body["progress_delays"]
            if not isinstance(delays, dict) or set(delays) - {"start", "settle"}:
                raise ValueError("progress_delays takes start and settle")
            current = sim.config.progress_delays
            sim.config.progress_delays = ProgressDelays(
                start=_number(delays.get("start", current.start), "start"),
                settle=_number(delays.get("settle", current.settle), "settle"),
            )
    except ValueError as exc:
        raise APIError("invalid-setting", str(exc)) from exc
    return web.json_response(_settings(sim))


def _number(value: Any, name: str, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper}")
    return float(value)


@routes.post("/_sim/reset")
async def reset(request: web.Request) -> web.Response:
    await _sim(request).reset()
    return web.json_response({"reset": True})


@routes.post("/_sim/api-keys")
async def register_api_key(request: web.Request) -> web.Response:
    body = await _body(request)
    key, permissions = body.get("apiKey"), body.get("permissions")
    if not isinstance(key, str) or not key:
        raise APIError("invalid-api-key", "apiKey must be a non-empty string")
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise APIError("invalid-api-key", "permissions must be a list of strings")
    api_key = _sim(request).keys.register(key, permissions, str(body.get("label") or ""))
    # The key itself is the caller's own input; echo only what it may do.
    # (Registering is how a test or the demo makes the key BTCPay's user would have created.)
    return web.json_response({"label": api_key.label, "permissions": list(api_key.permissions)})


@routes.post("/_sim/invoices")
async def mint_invoice(request: web.Request) -> web.Response:
    body = await _body(request)
    msat = body.get("amountMsat")
    if msat is None and body.get("amountSats") is not None:
        msat = body["amountSats"] * 1000 if isinstance(body["amountSats"], int) else None
    if msat is not None and (isinstance(msat, bool) or not isinstance(msat, int) or msat <= 0):
        raise APIError("invalid-amount", "amountMsat/amountSats must be a positive integer")
    expiry = body.get("expiry", 3600)
    if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry <= 0:
        raise APIError("invalid-expiry", "expiry must be a positive number of seconds")
    invoice = _sim(request).minter.mint(
        msat, description=str(body.get("description") or "btcpay-sim"), expiry=expiry
    )
    return web.json_response(
        {
            "bolt11": invoice.bolt11,
            "paymentHash": invoice.payment_hash,
            "preimage": invoice.preimage,
            "amountMsat": invoice.amount_msat,
        }
    )


@routes.post("/_sim/bulk-payouts")
async def bulk_payouts(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        bulk = BulkRequest(
            store_id=str(body.get("storeId") or ""),
            count=int(body.get("count", 0)),
            pull_payment_id=body.get("pullPaymentId"),
            min_sats=int(body.get("minSats", 100)),
            max_sats=int(body.get("maxSats", 250_000)),
            days=float(body.get("days", 30)),
            deliver_events=body.get("deliverEvents") is True,
        )
        if body.get("states") is not None:
            bulk.state_weights = {str(k): float(v) for k, v in dict(body["states"]).items()}
        result = await seed_payouts(_sim(request), bulk)
    except (TypeError, ValueError) as exc:
        raise APIError("invalid-bulk-request", str(exc)) from exc
    return web.json_response(result)


@routes.get("/_sim/stats")
async def stats(request: web.Request) -> web.Response:
    sim = _sim(request)
    by_state: Counter[str] = Counter(p.state for p in sim.state.payouts.values())
    return web.json_response(
        {
            "stores": len(sim.state.stores),
            "pullPayments": len(sim.state.pull_payments),
            "payouts": len(sim.state.payouts),
            "payoutsByState": {state: by_state.get(state, 0) for state in PAYOUT_STATES},
            "webhooks": len(sim.state.webhooks),
            "payoutCounters": dict(sim.state.counters),
            "deliveries": {**sim.webhooks.counters, "pending": sim.webhooks.pending()},
            "api": dict(sim.faults.counters),
        }
    )
