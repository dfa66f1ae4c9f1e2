"""The Greenfield API subset this project touches, with BTCPay's paths, fields and errors."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from aiohttp import web

from . import ids, money
from .errors import APIError, ValidationFailed
from .models import (
    CANCELLED,
    COMPLETED,
    LIGHTNING,
    LIGHTNING_ALIASES,
    Payout,
    PullPayment,
    Store,
    Webhook,
)
from .permissions import (
    CAN_ARCHIVE_PULL_PAYMENTS,
    CAN_CREATE_NON_APPROVED_PULL_PAYMENTS,
    CAN_CREATE_PULL_PAYMENTS,
    CAN_MANAGE_PAYOUTS,
    CAN_MODIFY_STORE_SETTINGS,
    CAN_MODIFY_WEBHOOKS,
    CAN_VIEW_PAYOUTS,
    CAN_VIEW_PULL_PAYMENTS,
    CAN_VIEW_STORE_SETTINGS,
    ApiKey,
)
from .sim import SIMULATOR, Simulator

routes = web.RouteTableDef()


# --- helpers ---------------------------------------------------------------------------------


def _sim(request: web.Request) -> Simulator:
    return request.app[SIMULATOR]


def authenticate(request: web.Request) -> ApiKey:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = _sim(request).keys.lookup(token.strip()) if scheme.lower() == "token" else None
    if key is None or not token.strip():
        raise APIError(
            "unauthenticated", "Authentication is required for accessing this endpoint", 401
        )
    return key


def authorize(request: web.Request, policy: str, store_id: str | None) -> ApiKey:
    key = authenticate(request)
    if not key.allows(policy, store_id):
        raise APIError(
            "missing-permission",
            f"Insufficient API Permissions. Please use an API key with permission: {policy}",
            403,
        )
    return key


async def read_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise ValidationFailed("", "The request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ValidationFailed("", "The request body must be a JSON object")
    return body


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(name, f"{name} must be an integer")
    return value


def _base_url(request: web.Request) -> str:
    configured = _sim(request).config.public_url
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# --- server ----------------------------------------------------------------------------------


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    return _json({"synchronized": True})


@routes.get("/api/v1/api-keys/current")
async def current_api_key(request: web.Request) -> web.Response:
    key = authenticate(request)
    return _json({"apiKey": key.key, "label": key.label, "permissions": list(key.permissions)})


# --- stores ----------------------------------------------------------------------------------


@routes.post("/api/v1/stores")
async def create_store(request: web.Request) -> web.Response:
    authorize(request, CAN_MODIFY_STORE_SETTINGS, None)
    body = await read_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationFailed("name", "name is missing")
    store = Store(
        id=ids.store_id(),
        name=name.strip(),
        website=body.get("website"),
        default_currency=str(body.get("defaultCurrency") or "BTC"),
    )
    _sim(request).state.add_store(store)
    return _json(store.to_json())


@routes.get("/api/v1/stores")
async def list_stores(request: web.Request) -> web.Response:
    key = authenticate(request)
    stores = _sim(request).state.stores.values()
    return _json([s.to_json() for s in stores if key.allows(CAN_VIEW_STORE_SETTINGS, s.id)])


@routes.get("/api/v1/stores/{storeId}")
async def get_store(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_STORE_SETTINGS, store_id)
    return _json(_sim(request).state.store(store_id).to_json())


# --- pull payments ---------------------------------------------------------------------------


@routes.post("/api/v1/stores/{storeId}/pull-payments")
async def create_pull_payment(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authenticate(request)
    body = await read_body(request)
    auto_approve = body.get("autoApproveClaims", False) is True
    # As in BTCPay, only the full policy may create pull payments that approve their claims.
    policy = CAN_CREATE_PULL_PAYMENTS if auto_approve else CAN_CREATE_NON_APPROVED_PULL_PAYMENTS
    authorize(request, policy, store_id)
    sim = _sim(request)
    sim.state.store(store_id)
    currency = body.get("currency")
    if currency not in money.SUPPORTED_CURRENCIES:
        raise ValidationFailed("currency", "The simulator knows the currencies BTC and SATS")
    try:
        amount = money.parse_amount(body.get("amount"))
    except ValueError as exc:
        raise ValidationFailed("amount", str(exc)) from exc
    if amount <= 0:
        raise ValidationFailed("amount", "The amount should be more than 0")
    methods = body.get("payoutMethods") or [LIGHTNING]
    if not isinstance(methods, list) or not all(m in LIGHTNING_ALIASES for m in methods):
        raise ValidationFailed("payoutMethods", "The simulator only supports BTC-LN payouts")
    starts_at = _optional_int(body, "startsAt") or int(time.time())
    expires_at = _optional_int(body, "expiresAt")
    if expires_at is not None and expires_at <= starts_at:
        raise ValidationFailed("expiresAt", "expiresAt should be higher than startAt")
    pull_payment = PullPayment(
        id=ids.pull_payment_id(),
        store_id=store_id,
        name=str(body.get("name") or ""),
        description=str(body.get("description") or ""),
        amount=amount,
        currency=currency,
        auto_approve_claims=auto_approve,
        payout_methods=[LIGHTNING],
        starts_at=starts_at,
        expires_at=expires_at,
        period=_optional_int(body, "period"),
        bolt11_expiration_days=_optional_int(body, "BOLT11Expiration") or 30,
    )
    sim.state.add_pull_payment(pull_payment)
    return _json(pull_payment.to_json(_base_url(request)))


@routes.get("/api/v1/stores/{storeId}/pull-payments")
async def list_pull_payments(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_PULL_PAYMENTS, store_id)
    sim = _sim(request)
    sim.state.store(store_id)
    include_archived = _flag(request, "includeArchived")
    base = _base_url(request)
    return _json(
        [
            pp.to_json(base)
            for pp in sim.state.pull_payments.values()
            if pp.store_id == store_id and (include_archived or not pp.archived)
        ]
    )


@routes.delete("/api/v1/stores/{storeId}/pull-payments/{pullPaymentId}")
async def archive_pull_payment(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_ARCHIVE_PULL_PAYMENTS, store_id)
    pull_payment = _sim(request).state.pull_payment(request.match_info["pullPaymentId"])
    if pull_payment.store_id != store_id:
        raise APIError("pullpayment-not-found", "The pull payment was not found", 404)
    pull_payment.archived = True
    return web.Response(status=200)


@routes.get("/api/v1/pull-payments/{pullPaymentId}")
async def get_pull_payment(request: web.Request) -> web.Response:
    pull_payment = _sim(request).state.pull_payment(request.match_info["pullPaymentId"])
    return _json(pull_payment.to_json(_base_url(request)))


# --- payouts of a pull payment (anonymous) ---------------------------------------------------


@routes.post("/api/v1/pull-payments/{pullPaymentId}/payouts")
async def claim_payout(request: web.Request) -> web.Response:
    body = await read_body(request)
    destination = body.get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise ValidationFailed("destination", "destination is missing")
    amount: Decimal | None = None
    if body.get("amount") is not None:
        try:
            amount = money.parse_amount(body["amount"])
        except ValueError as exc:
            raise ValidationFailed("amount", str(exc)) from exc
    method = body.get("payoutMethodId") or body.get("paymentMethod") or LIGHTNING
    payout = _sim(request).book.claim(
        request.match_info["pullPaymentId"], destination, amount, str(method)
    )
    return _json(payout.to_json())


@routes.get("/api/v1/pull-payments/{pullPaymentId}/payouts")
async def list_pull_payment_payouts(request: web.Request) -> web.Response:
    sim = _sim(request)
    pull_payment = sim.state.pull_payment(request.match_info["pullPaymentId"])
    payouts = sim.state.pull_payment_payouts[pull_payment.id].values()
    return _payout_list(payouts, _flag(request, "includeCancelled"))


@routes.get("/api/v1/pull-payments/{pullPaymentId}/payouts/{payoutId}")
async def get_pull_payment_payout(request: web.Request) -> web.Response:
    sim = _sim(request)
    pull_payment = sim.state.pull_payment(request.match_info["pullPaymentId"])
    payout = sim.state.pull_payment_payouts[pull_payment.id].get(request.match_info["payoutId"])
    if payout is None:
        raise APIError("payout-not-found", "The payout was not found", 404)
    return _json(payout.to_json())


# --- payouts of a store ----------------------------------------------------------------------


def _payout_list(payouts: Any, include_cancelled: bool) -> web.Response:
    return _json([p.to_json() for p in payouts if include_cancelled or p.state != CANCELLED])


@routes.get("/api/v1/stores/{storeId}/payouts")
async def list_store_payouts(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_PAYOUTS, store_id)
    sim = _sim(request)
    sim.state.store(store_id)
    payouts: list[Payout] = list(sim.state.store_payouts[store_id].values())
    return _payout_list(payouts, _flag(request, "includeCancelled"))


@routes.get("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def get_store_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_PAYOUTS, store_id)
    payout = _sim(request).state.store_payout(store_id, request.match_info["payoutId"])
    return _json(payout.to_json())


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def approve_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    body = await read_body(request)
    revision = _optional_int(body, "revision")
    if revision is None:
        raise ValidationFailed("revision", "revision is missing")
    payout = _sim(request).book.approve(store_id, request.match_info["payoutId"], revision)
    return _json(payout.to_json())


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}/mark-paid")
async def mark_payout_paid(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    _sim(request).book.mark(store_id, request.match_info["payoutId"], COMPLETED)
    return web.Response(status=200)


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}/mark")
async def mark_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    body = await read_body(request)
    proof = body.get("paymentProof")
    if proof is not None and not isinstance(proof, dict):
        raise ValidationFailed("paymentProof", "paymentProof must be an object")
    state = str(body.get("state") or "")
    _sim(request).book.mark(store_id, request.match_info["payoutId"], state, proof)
    return web.Response(status=200)


@routes.delete("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def cancel_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    _sim(request).book.cancel(store_id, request.match_info["payoutId"])
    return web.Response(status=200)


# --- webhooks --------------------------------------------------------------------------------


def _apply_webhook_body(webhook: Webhook, body: dict[str, Any]) -> None:
    url = body.get("url", webhook.url)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValidationFailed("url", "url must be an absolute http(s) URL")
    webhook.url = url
    webhook.enabled = body.get("enabled", webhook.enabled) is not False
    webhook.automatic_redelivery = (
        body.get("automaticRedelivery", webhook.automatic_redelivery) is not False
    )
    events = body.get("authorizedEvents")
    if isinstance(events, dict):
        webhook.everything = events.get("everything", True) is not False
        specific = events.get("specificEvents") or []
        if not isinstance(specific, list) or not all(isinstance(e, str) for e in specific):
            raise ValidationFailed("authorizedEvents.specificEvents", "must be a list of names")
        webhook.specific_events = specific


@routes.post("/api/v1/stores/{storeId}/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    sim = _sim(request)
    sim.state.store(store_id)
    body = await read_body(request)
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise ValidationFailed("secret", "secret must be a string")
    webhook = Webhook(
        id=ids.webhook_id(),
        store_id=store_id,
        url="",
        # BTCPay generates a secret when none is given and shows it only in this answer.
        secret=secret or ids.base58(sim.rng.randbytes(24)),
    )
    body.setdefault("url", None)
    _apply_webhook_body(webhook, body)
    sim.state.webhooks[webhook.id] = webhook
    return _json(webhook.to_json(with_secret=True))


@routes.get("/api/v1/stores/{storeId}/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    sim = _sim(request)
    sim.state.store(store_id)
    return _json([w.to_json() for w in sim.state.webhooks.values() if w.store_id == store_id])


@routes.get("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def get_webhook(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    webhook = _sim(request).state.webhook(store_id, request.match_info["webhookId"])
    return _json(webhook.to_json())


@routes.put("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def update_webhook(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    webhook = _sim(request).state.webhook(store_id, request.match_info["webhookId"])
    body = await read_body(request)
    _apply_webhook_body(webhook, body)
    if isinstance(body.get("secret"), str) and body["secret"]:
        webhook.secret = body["secret"]
    return _json(webhook.to_json())


@routes.delete("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def delete_webhook(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    sim = _sim(request)
    webhook = sim.state.webhook(store_id, request.match_info["webhookId"])
    del sim.state.webhooks[webhook.id]
    await sim.webhooks.stop(webhook.id)
    return web.Response(status=200)
