"""The Greenfield API subset this project touches, with BTCPay's paths, fields and errors.

Authentication and authorisation answer as BTCPay 2.4 does: a key BTCPay does not know is a 401
(unless the simulator was asked to be permissive), a missing permission is a 403 whose body names
it in ``missingPermission``, and so is a store that does not exist or that the key cannot see.
Invalid request fields are a 422 listing ``{path, message}`` with C# property names as paths.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

import bech32
from aiohttp import web

from . import ids, money
from .errors import APIError, Problems, ValidationFailed, missing_permission, unauthenticated
from .models import (
    CANCELLED,
    COMPLETED,
    LIGHTNING,
    PAYOUT_METHOD_IDS,
    PAYOUT_STATES,
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
    token = token.strip()
    key = _sim(request).keys.lookup(token) if scheme.lower() == "token" and token else None
    if key is None:
        raise unauthenticated()
    return key


def authorize(request: web.Request, policy: str, store_id: str | None) -> ApiKey:
    """The key, when it holds ``policy`` on the store (None: on every store, unscoped).

    BTCPay looks the store up among those the key's owner can reach: one that does not exist
    fails the policy exactly like one the key may not see, with the same 403.
    """
    key = authenticate(request)
    if store_id is not None and store_id not in _sim(request).state.stores:
        raise missing_permission(policy)
    if not key.allows(policy, store_id):
        raise missing_permission(policy)
    return key


async def read_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
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


def _integer(body: dict[str, Any], name: str, path: str, problems: Problems) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, f"{name} must be an integer")
        return None
    return value


def _base_url(request: web.Request) -> str:
    configured = _sim(request).config.public_url
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _payout_method(value: Any) -> str | None:
    return PAYOUT_METHOD_IDS.get(value) if isinstance(value, str) else None


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
    problems = Problems()
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.add("Name", "Name is missing")
    sim = _sim(request)
    refund_days = _integer(body, "refundBOLT11Expiration", "RefundBOLT11Expiration", problems)
    if refund_days is not None and refund_days < 0:
        problems.add("RefundBOLT11Expiration", "The BOLT11 expiration should be positive")
    problems.raise_any()
    assert isinstance(name, str)
    store = Store(
        id=ids.store_id(),
        name=name.strip(),
        website=body.get("website"),
        default_currency=str(body.get("defaultCurrency") or "BTC"),
        refund_bolt11_expiration_days=(
            sim.config.refund_bolt11_expiration_days if refund_days is None else refund_days
        ),
    )
    sim.state.add_store(store)
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
    authorize(request, CAN_CREATE_NON_APPROVED_PULL_PAYMENTS, store_id)
    body = await read_body(request)
    auto_approve = body.get("autoApproveClaims", False) is True
    if auto_approve:
        # As in BTCPay, only the full policy may create pull payments that approve their claims.
        authorize(request, CAN_CREATE_PULL_PAYMENTS, store_id)
    sim = _sim(request)
    store = sim.state.store(store_id)
    problems = Problems()
    amount = Decimal(0)
    try:
        amount = money.parse_amount(body.get("amount"))
    except ValueError as exc:
        problems.add("Amount", str(exc))
    else:
        if amount <= 0:
            problems.add("Amount", "The amount should more than 0.")
    name = body.get("name")
    if isinstance(name, str) and len(name) > 50:
        problems.add("Name", "The name should be maximum 50 characters.")
    currency = body.get("currency")
    if not isinstance(currency, str) or not currency.strip():
        problems.add("Currency", "This field is required")
    else:
        currency = currency.strip().upper()
        if currency not in money.SUPPORTED_CURRENCIES:
            problems.add("Currency", "Invalid currency")
    starts_at = _integer(body, "startsAt", "StartsAt", problems)
    expires_at = _integer(body, "expiresAt", "ExpiresAt", problems)
    if expires_at is not None and starts_at is not None and expires_at < starts_at:
        problems.add("ExpiresAt", "expiresAt should be higher than startAt")
    period = _integer(body, "period", "Period", problems)
    bolt11_days = _integer(body, "BOLT11Expiration", "BOLT11Expiration", problems)
    if bolt11_days is not None and bolt11_days < 0:
        problems.add("BOLT11Expiration", "The BOLT11 expiration should be positive")
    methods: list[str] = []
    requested = body.get("payoutMethods")
    if not isinstance(requested, list):
        problems.add("PayoutMethods", "This field is required")
    else:
        for i, item in enumerate(requested):
            method = _payout_method(item)
            if method is None:
                problems.add(f"PayoutMethods[{i}]", "Invalid or unsupported payment method")
            elif method not in methods:
                methods.append(method)
    problems.raise_any()
    pull_payment = PullPayment(
        id=ids.pull_payment_id(),
        store_id=store_id,
        name=str(name or ""),
        description=str(body.get("description") or ""),
        amount=amount,
        currency=str(currency),
        auto_approve_claims=auto_approve,
        payout_methods=methods,
        # BTCPay starts a pull payment a second in the past, so it can be claimed at once.
        starts_at=starts_at if starts_at is not None else int(time.time()) - 1,
        expires_at=expires_at,
        period=period,
        # Left out, it is the store's refund setting: 30 days unless the merchant changed it.
        bolt11_expiration_days=(
            store.refund_bolt11_expiration_days if bolt11_days is None else bolt11_days
        ),
    )
    sim.state.add_pull_payment(pull_payment)
    return _json(pull_payment.to_json(_base_url(request)))


@routes.get("/api/v1/stores/{storeId}/pull-payments")
async def list_pull_payments(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_PULL_PAYMENTS, store_id)
    sim = _sim(request)
    include_archived = _flag(request, "includeArchived")
    base = _base_url(request)
    return _json(
        [
            pp.to_json(base)
            for pp in sim.state.pull_payments.values()
            if pp.store_id == store_id and (include_archived or not pp.archived)
        ]
    )


def _pull_payment_not_found() -> APIError:
    return APIError("pullpayment-not-found", "The pull payment was not found", 404)


@routes.delete("/api/v1/stores/{storeId}/pull-payments/{pullPaymentId}")
async def archive_pull_payment(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_ARCHIVE_PULL_PAYMENTS, store_id)
    sim = _sim(request)
    pull_payment = sim.state.pull_payments.get(request.match_info["pullPaymentId"])
    if pull_payment is None or pull_payment.store_id != store_id:
        raise _pull_payment_not_found()
    sim.book.archive(pull_payment)
    return web.Response(status=200)


@routes.delete("/api/v1/pull-payments/{pullPaymentId}")
async def archive_pull_payment_by_id(request: web.Request) -> web.Response:
    """2.4's route without the store: the key needs the permission on the pull payment's."""
    authenticate(request)
    sim = _sim(request)
    pull_payment = sim.state.pull_payment(request.match_info["pullPaymentId"])
    authorize(request, CAN_ARCHIVE_PULL_PAYMENTS, pull_payment.store_id)
    sim.book.archive(pull_payment)
    return web.Response(status=200)


@routes.get("/api/v1/pull-payments/{pullPaymentId}")
async def get_pull_payment(request: web.Request) -> web.Response:
    pull_payment = _sim(request).state.pull_payment(request.match_info["pullPaymentId"])
    return _json(pull_payment.to_json(_base_url(request)))


@routes.get("/api/v1/pull-payments/{pullPaymentId}/lnurl")
async def get_pull_payment_lnurl(request: web.Request) -> web.Response:
    """The pull payment's LNURL-withdraw, when it pays BTC-LN in BTC or SATS (anonymous)."""
    pull_payment = _sim(request).state.pull_payment(request.match_info["pullPaymentId"])
    if LIGHTNING not in pull_payment.payout_methods:
        raise APIError("lnurl-not-supported", "LNURL not supported for this pull payment")
    url = f"{_base_url(request)}/BTC/UILNURL/withdraw/pp/{pull_payment.id}"
    words = bech32.convertbits(url.encode(), 8, 5)
    assert words is not None
    return _json(
        {
            "lnurlBech32": "lightning:" + bech32.bech32_encode("lnurl", words).upper(),
            "lnurlUri": re.sub(r"^https?://", "lnurlw://", url),
        }
    )


# --- payouts of a pull payment (anonymous) ---------------------------------------------------


@routes.post("/api/v1/pull-payments/{pullPaymentId}/payouts")
async def claim_payout(request: web.Request) -> web.Response:
    """A claim, checked in BTCPay's order: the method (422), the pull payment (404), the
    destination and its BOLT11Expiration (422), the amount (422), then the pull payment's own
    rules (400 with a code)."""
    body = await read_body(request)
    method = _payout_method(body.get("payoutMethodId") or body.get("paymentMethod"))
    if method is None:
        raise ValidationFailed("PayoutMethodId", "Invalid payment method")
    sim = _sim(request)
    pull_payment = sim.state.pull_payment(request.match_info["pullPaymentId"])
    if method != LIGHTNING:
        if method not in pull_payment.payout_methods:
            raise APIError(
                "payment-method-not-supported",
                "This payment method is not supported by the pull payment",
            )
        raise ValidationFailed("Destination", "The simulator does not pay on-chain payouts")
    destination = body.get("destination")
    invoice = sim.book.read_destination(destination if isinstance(destination, str) else "")
    sim.book.check_expiry(pull_payment, invoice)
    requested: Decimal | None = None
    if body.get("amount") is not None:
        try:
            requested = money.parse_amount(body["amount"])
        except ValueError as exc:
            raise ValidationFailed("Amount", str(exc)) from exc
    amount = sim.book.claim_amount(pull_payment, invoice, requested)
    assert isinstance(destination, str)
    payout = sim.book.create(pull_payment, invoice, destination, amount, method)
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
    payouts: list[Payout] = list(_sim(request).state.store_payouts[store_id].values())
    return _payout_list(payouts, _flag(request, "includeCancelled"))


@routes.get("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def get_store_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_VIEW_PAYOUTS, store_id)
    payout = _sim(request).state.store_payout(store_id, request.match_info["payoutId"])
    return _json(payout.to_json())


@routes.get("/api/v1/payouts/{payoutId}")
async def get_payout(request: web.Request) -> web.Response:
    """2.4's route without the store: the key needs canviewpayouts on the payout's store."""
    authenticate(request)
    payout = _sim(request).state.payouts.get(request.match_info["payoutId"])
    if payout is None:
        raise APIError("payout-not-found", "The payout was not found", 404)
    authorize(request, CAN_VIEW_PAYOUTS, payout.store_id)
    return _json(payout.to_json())


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def approve_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    body = await read_body(request)
    problems = Problems()
    revision = _integer(body, "revision", "Revision", problems)
    if revision is None and not problems.found:
        problems.add("Revision", "The `revision` property is required")
    problems.raise_any()
    assert revision is not None
    payout = _sim(request).book.approve(store_id, request.match_info["payoutId"], revision)
    return _json(payout.to_json())


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}/mark-paid")
async def mark_payout_paid(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    _sim(request).book.mark(store_id, request.match_info["payoutId"], COMPLETED, None)
    return web.Response(status=200)


@routes.post("/api/v1/stores/{storeId}/payouts/{payoutId}/mark")
async def mark_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    body = await read_body(request)
    # BTCPay's MarkPayoutRequest defaults its state to Completed.
    state = body.get("state") if body.get("state") is not None else COMPLETED
    if state not in PAYOUT_STATES:
        raise ValidationFailed("State", f"The state {state!r} is not a payout state")
    proof = body.get("paymentProof")
    if proof is not None and (not isinstance(proof, dict) or "proofType" not in proof):
        raise ValidationFailed("PaymentProof", "Payment proof must have a 'proofType' property")
    _sim(request).book.mark(store_id, request.match_info["payoutId"], str(state), proof)
    return web.Response(status=200)


@routes.delete("/api/v1/stores/{storeId}/payouts/{payoutId}")
async def cancel_payout(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MANAGE_PAYOUTS, store_id)
    _sim(request).book.cancel(store_id, request.match_info["payoutId"])
    return web.Response(status=200)


# --- webhooks --------------------------------------------------------------------------------


def _apply_webhook_body(webhook: Webhook, body: dict[str, Any]) -> None:
    problems = Problems()
    url = body.get("url", webhook.url)
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        problems.add("Url", "Invalid Url")
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        problems.add("Secret", "The secret must be a string")
    events = body.get("authorizedEvents")
    specific: Any = webhook.specific_events
    if isinstance(events, dict):
        specific = events.get("specificEvents") or []
        if not isinstance(specific, list) or not all(isinstance(e, str) for e in specific):
            problems.add("AuthorizedEvents.SpecificEvents", "must be a list of event types")
    problems.raise_any()
    webhook.url = str(url)
    webhook.enabled = body.get("enabled", webhook.enabled) is not False
    webhook.automatic_redelivery = (
        body.get("automaticRedelivery", webhook.automatic_redelivery) is not False
    )
    if isinstance(events, dict):
        webhook.everything = events.get("everything", True) is not False
        webhook.specific_events = list(specific)
    if isinstance(secret, str) and secret:
        webhook.secret = secret


def _webhook_not_found() -> APIError:
    return APIError("webhook-not-found", "The webhook was not found", 404)


@routes.post("/api/v1/stores/{storeId}/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    sim = _sim(request)
    body = await read_body(request)
    webhook = Webhook(
        id=ids.webhook_id(),
        store_id=store_id,
        url="",
        # BTCPay generates a secret when none is given and shows it only in this answer.
        secret=ids.base58(sim.rng.randbytes(24)),
    )
    body.setdefault("url", None)
    _apply_webhook_body(webhook, body)
    sim.state.webhooks[webhook.id] = webhook
    return _json(webhook.to_json(with_secret=True))


@routes.get("/api/v1/stores/{storeId}/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    webhooks = _sim(request).state.webhooks.values()
    return _json([w.to_json() for w in webhooks if w.store_id == store_id])


async def _store_webhook(request: web.Request) -> Webhook:
    store_id = request.match_info["storeId"]
    authorize(request, CAN_MODIFY_WEBHOOKS, store_id)
    webhook = _sim(request).state.webhooks.get(request.match_info["webhookId"])
    if webhook is None or webhook.store_id != store_id:
        raise _webhook_not_found()
    return webhook


async def _any_webhook(request: web.Request) -> Webhook:
    """2.4's route without the store: the key needs the permission on the webhook's store."""
    authenticate(request)
    webhook = _sim(request).state.webhooks.get(request.match_info["webhookId"])
    if webhook is None:
        raise _webhook_not_found()
    authorize(request, CAN_MODIFY_WEBHOOKS, webhook.store_id)
    return webhook


async def _show_webhook(webhook: Webhook) -> web.Response:
    return _json(webhook.to_json())


async def _update_webhook(request: web.Request, webhook: Webhook) -> web.Response:
    _apply_webhook_body(webhook, await read_body(request))
    return _json(webhook.to_json())


async def _delete_webhook(request: web.Request, webhook: Webhook) -> web.Response:
    sim = _sim(request)
    del sim.state.webhooks[webhook.id]
    await sim.webhooks.stop(webhook.id)
    return web.Response(status=200)


@routes.get("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def get_webhook(request: web.Request) -> web.Response:
    return await _show_webhook(await _store_webhook(request))


@routes.put("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def update_webhook(request: web.Request) -> web.Response:
    return await _update_webhook(request, await _store_webhook(request))


@routes.delete("/api/v1/stores/{storeId}/webhooks/{webhookId}")
async def delete_webhook(request: web.Request) -> web.Response:
    return await _delete_webhook(request, await _store_webhook(request))


@routes.get("/api/v1/webhooks/{webhookId}")
async def get_any_webhook(request: web.Request) -> web.Response:
    return await _show_webhook(await _any_webhook(request))


@routes.put("/api/v1/webhooks/{webhookId}")
async def update_any_webhook(request: web.Request) -> web.Response:
    return await _update_webhook(request, await _any_webhook(request))


@routes.delete("/api/v1/webhooks/{webhookId}")
async def delete_any_webhook(request: web.Request) -> web.Response:
    return await _delete_webhook(request, await _any_webhook(request))
