"""The OpenAPI 3 document of the API, served at /plugins/flash/api/openapi.json.

It is kept beside the handlers and a test checks that every route is here and every answer
conforms to it.
"""

from __future__ import annotations

from typing import Any

from ledger.api_queries import PAYOUT_SORTS, USAGE_SORTS
from ledger.status import BTCPAY_STATES, STATUSES

from .context import PREFIX
from .params import MAX_LIMIT
from .spreadsheet import MEDIA_TYPE

Schema = dict[str, Any]


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
DAY = {"type": "string", "format": "date"}
DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "exact decimal"}


def _obj(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_PAYOUT: dict[str, Schema] = {
    "payoutId": STR,
    "pullPaymentId": _nullable(STR),
    "storeId": STR,
    "amount": _nullable(DECIMAL),
    "currency": _nullable(STR),
    "payoutAmount": _nullable(DECIMAL),
    "payoutCurrency": _nullable(STR),
    "amountSats": _nullable(INT),
    "status": {"type": "string", "enum": list(STATUSES)},
    "state": {"type": "string", "description": "BTCPay's raw state: " + ", ".join(BTCPAY_STATES)},
    "revision": INT,
    "createdAt": TIME,
    "completedAt": _nullable(TIME),
    "updatedAt": TIME,
    "boltcardId": _nullable(STR),
    "boltcardNtag": _nullable({**STR, "description": "the card's NTAG UID; null once erased"}),
    "recipientAddress": _nullable(STR),
    "payoutMethodId": _nullable(STR),
    "paymentHash": _nullable(STR),
    "transactionId": _nullable(STR),
    "errorMessage": _nullable(STR),
}
_COUNT_SATS = _obj({"count": INT, "amountSats": INT})
_BY_STATUS_COUNT = _obj(dict.fromkeys(STATUSES, INT))
_USAGE = {
    "boltcardId": STR,
    "alias": _nullable(STR),
    "totalPayouts": INT,
    "totalAmount": {**INT, "description": "satoshis"},
    "taps": INT,
    "refusedTaps": INT,
    "firstUsed": _nullable(TIME),
    "lastUsed": _nullable(TIME),
}
_CARD = {
    "boltcardId": STR,
    "storeId": _nullable(STR),
    "alias": _nullable(STR),
    "enabled": _nullable(BOOL),
    "txLimitSats": _nullable(INT),
    "dayLimitSats": _nullable(INT),
    "erased": BOOL,
    "totalPayouts": INT,
    "totalAmount": {**INT, "description": "satoshis"},
    "totalTaps": INT,
    "firstUsed": _nullable(TIME),
    "lastUsed": _nullable(TIME),
}
_CHANGE_PAYOUT = {
    "id": INT,
    "payoutId": STR,
    "source": STR,
    "type": STR,
    "state": _nullable(STR),
    "status": _nullable(STR),
    "revision": _nullable(INT),
    "receivedAt": TIME,
}
_CHANGE_TAP = {
    "id": INT,
    "boltcardId": _nullable(STR),
    "outcome": STR,
    "reason": _nullable(STR),
    "amountSats": _nullable(INT),
    "payoutId": _nullable(STR),
    "createdAt": TIME,
}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"code": STR, "message": STR}),
    "Payout": _obj(_PAYOUT),
    "PayoutPage": _obj(
        {
            "items": {"type": "array", "items": _ref("Payout")},
            "total": {**INT, "description": "all payouts matching the filters"},
            "limit": INT,
            "offset": _nullable(INT),
            "nextCursor": _nullable({**STR, "description": "pass as cursor for the next page"}),
        }
    ),
    "PayoutEvent": _obj(
        {
            "id": INT,
            "source": {**STR, "description": "gateway, webhook or reconcile"},
            "type": STR,
            "state": _nullable(STR),
            "revision": _nullable(INT),
            "occurredAt": _nullable(TIME),
            "receivedAt": TIME,
        }
    ),
    "Boltcard": _obj(_CARD),
    "PayoutDetail": {
        "allOf": [
            _ref("Payout"),
            _obj(
                {
                    "paymentProof": _nullable({"type": "object"}),
                    "metadata": _nullable({"type": "object"}),
                    "events": {"type": "array", "items": _ref("PayoutEvent")},
                    "boltcard": {**_ref("Boltcard"), "nullable": True},
                }
            ),
        ]
    },
    "SeriesPoint": _obj(
        {"start": DAY, "count": INT, "amountSats": INT, "byStatus": _BY_STATUS_COUNT}
    ),
    "Stats": _obj(
        {
            "storeId": STR,
            "startDate": DAY,
            "endDate": DAY,
            "totalCount": INT,
            "totalAmountSats": INT,
            "totalAmountByCurrency": {"type": "object", "additionalProperties": DECIMAL},
            "byStatus": _obj(dict.fromkeys(STATUSES, _COUNT_SATS)),
            "successRate": _nullable(
                {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "Completed / (Completed + Failed)",
                }
            ),
            "series": _obj(
                {
                    p: {"type": "array", "items": _ref("SeriesPoint")}
                    for p in ("day", "week", "month")
                }
            ),
            "topCards": {
                "type": "array",
                "items": _obj(
                    {
                        "boltcardId": STR,
                        "alias": _nullable(STR),
                        "totalPayouts": INT,
                        "totalAmount": INT,
                    }
                ),
            },
        }
    ),
    "BoltcardUsage": _obj(_USAGE),
    "UsagePage": _obj(
        {
            "items": {"type": "array", "items": _ref("BoltcardUsage")},
            "total": INT,
            "limit": INT,
            "offset": INT,
        }
    ),
    "BoltcardUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "alias": _nullable({**STR, "maxLength": 100}),
            "enabled": BOOL,
            "txLimitSats": {**INT, "minimum": 0},
            "dayLimitSats": {**INT, "minimum": 0},
        },
    },
    "CardTracking": _obj({"enabled": BOOL}),
    "CardTrackingAnswer": _obj({"storeId": STR, "cardTracking": BOOL}),
    "BoltcardData": _obj(
        {
            "boltcard": {"type": "object"},
            "taps": {"type": "array", "items": {"type": "object"}},
            "payouts": {"type": "array", "items": _ref("Payout")},
            "dailyUsage": {"type": "array", "items": {"type": "object"}},
            "daySpend": {"type": "array", "items": {"type": "object"}},
        }
    ),
    "Erasure": _obj({"boltcardId": STR, "erasedAt": TIME, "tapsErased": INT, "payoutsErased": INT}),
    "Changes": _obj(
        {
            "changes": {
                "type": "array",
                "items": _obj(
                    {
                        "type": {"type": "string", "enum": ["payout", "tap"]},
                        "position": STR,
                        "data": {"oneOf": [_obj(_CHANGE_PAYOUT), _obj(_CHANGE_TAP)]},
                    }
                ),
            },
            "next": {**STR, "description": "the position to poll after next time"},
        }
    ),
}


def _q(name: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


def _path(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": 64},
        "description": description,
    }


STORE = _q(
    "storeId",
    {"type": "string", "maxLength": 64},
    "The store. Optional with a local token (its own store); required with a BTCPay API key.",
)
PERIOD = [
    _q(
        "startDate",
        STR,
        "ISO 8601 date (2024-05-01, from midnight UTC) or date-time; inclusive.",
    ),
    _q(
        "endDate",
        STR,
        "ISO 8601 date (that whole day included) or date-time (exclusive).",
    ),
]
PAGE = [
    _q(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
        "Page size.",
    ),
    _q("offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip."),
]
ORDER = _q("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"}, "Direction.")
PAYOUT_FILTERS = [
    STORE,
    *PERIOD,
    _q(
        "status",
        {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
        "Repeatable (status=Completed&status=Failed) or comma-separated.",
        style="form",
        explode=True,
    ),
    _q("boltcardId", STR, "Only payouts collected by this card."),
    _q(
        "q",
        STR,
        "A payout id or its prefix, or an exact amount in the payout's currency or in sats.",
    ),
    _q("minAmount", {"type": "string", "pattern": r"^\d+(\.\d+)?$"}, "Lowest amount."),
    _q("maxAmount", {"type": "string", "pattern": r"^\d+(\.\d+)?$"}, "Highest amount."),
    _q(
        "sort",
        {"type": "string", "enum": list(PAYOUT_SORTS), "default": "createdAt"},
        "Sort key.",
    ),
    ORDER,
]
USAGE_FILTERS = [
    STORE,
    *PERIOD,
    _q("sort", {"type": "string", "enum": list(USAGE_SORTS), "default": "totalAmount"}, "Sort."),
    ORDER,
]
FORMAT = _q(
    "format",
    {"type": "string", "enum": ["csv", "json", "xlsx"], "default": "csv"},
    "Format: CSV, a JSON array, or a spreadsheet (.xlsx: typed cells, frozen header, "
    "autofilter, and a summary sheet with the totals by status and the top cards).",
)


def _json(name: str) -> Schema:
    return {"application/json": {"schema": _ref(name)}}


def _errors(*statuses: int) -> dict[str, Schema]:
    text = {
        400: "A parameter is invalid; the message names it.",
        401: "No valid credentials.",
        403: "The credential may not see or manage this store.",
        404: "Not found.",
        429: "Rate limited; see Retry-After.",
        502: "The store's BTCPay Server could not check the API key.",
    }
    out = {str(s): {"description": text[s], "content": _json("Error")} for s in statuses}
    if "429" in out:
        out["429"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
        }
    return out


_COMMON = (400, 401, 403, 429, 502)


def _op(
    summary: str,
    ok: Schema,
    parameters: list[Schema],
    *,
    errors: tuple[int, ...] = _COMMON,
    body: str | None = None,
    description: str = "",
) -> Schema:
    op: Schema = {
        "summary": summary,
        "parameters": parameters,
        "responses": {"200": ok, **_errors(*errors)},
    }
    if description:
        op["description"] = description
    if body:
        op["requestBody"] = {"required": True, "content": _json(body)}
    return op


def _ok(name: str, description: str = "OK") -> Schema:
    return {"description": description, "content": _json(name)}


def _export(description: str) -> Schema:
    return {
        "description": description,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }


PATHS: dict[str, dict[str, Schema]] = {
    "/payouts": {
        "get": _op(
            "List payouts",
            _ok("PayoutPage"),
            [
                *PAYOUT_FILTERS,
                *PAGE,
                _q("cursor", STR, "nextCursor of the previous page (keyset paging)."),
            ],
        )
    },
    "/payouts/export": {
        "get": _op(
            "Export payouts (streamed)",
            _export("Every payout matching the filters"),
            [*PAYOUT_FILTERS, FORMAT],
        )
    },
    "/payouts/stats": {
        "get": _op(
            "Statistics for a period (whole UTC days, default the last 30), from the rollups",
            _ok("Stats"),
            [
                *[STORE, *PERIOD],
                _q("top", {"type": "integer", "minimum": 1, "maximum": 100}, "Top cards."),
            ],
        )
    },
    "/payouts/{payoutId}": {
        "get": _op(
            "One payout with its event history and card",
            _ok("PayoutDetail"),
            [_path("payoutId", "BTCPay's payout id"), STORE],
            errors=(*_COMMON, 404),
        )
    },
    "/boltcards/usage": {
        "get": _op("Usage per card (whole UTC days)", _ok("UsagePage"), [*USAGE_FILTERS, *PAGE])
    },
    "/boltcards/usage/export": {
        "get": _op(
            "Export usage per card (streamed)",
            _export("Usage of every card in the period"),
            [*USAGE_FILTERS, FORMAT],
        )
    },
    "/boltcards/{boltcardId}": {
        "get": _op(
            "One card and its lifetime usage",
            _ok("Boltcard"),
            [_path("boltcardId", "card id")],
            errors=(*_COMMON, 404),
        ),
        "patch": _op(
            "Change a card's alias, enabled flag or limits (manager)",
            _ok("Boltcard"),
            [_path("boltcardId", "card id")],
            errors=(*_COMMON, 404),
            body="BoltcardUpdate",
        ),
    },
    "/boltcards/{boltcardId}/data": {
        "get": _op(
            "Everything held about one card (manager)",
            _ok("BoltcardData"),
            [_path("boltcardId", "card id")],
            errors=(*_COMMON, 404),
        )
    },
    "/boltcards/{boltcardId}/personal-data": {
        "delete": _op(
            "Erase a card's personal data, keeping aggregate counts (manager)",
            _ok("Erasure"),
            [_path("boltcardId", "card id")],
            errors=(*_COMMON, 404),
        )
    },
    "/stores/{storeId}/card-tracking": {
        "put": _op(
            "Opt the store in or out of card tracking (manager)",
            _ok("CardTrackingAnswer"),
            [_path("storeId", "BTCPay store id")],
            errors=(*_COMMON, 404),
            body="CardTracking",
        )
    },
    "/events": {
        "get": _op(
            "Live payout and tap changes (Server-Sent Events)",
            {
                "description": "An endless text/event-stream; events `payout` and `tap`, "
                "each with an id to resume from (Last-Event-ID).",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            [STORE, _q("after", STR, "Resume after this position (or send Last-Event-ID).")],
        )
    },
    "/events/poll": {
        "get": _op(
            "The polling fallback for live changes",
            _ok("Changes"),
            [STORE, _q("after", STR, "Position from the previous answer's next.")],
        )
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors(429),
            },
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Flash Payout Monitor API",
            "version": "1",
            "description": "Payouts, statistics, Boltcard usage, exports and live updates for "
            "BTCPay Server stores. See docs/api.md.",
        },
        "servers": [{"url": PREFIX}],
        "security": [{"localToken": []}, {"btcpayApiKey": []}],
        "components": {
            "securitySchemes": {
                "localToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `flash-payouts tokens create`.",
                },
                "btcpayApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <BTCPay Greenfield API key>`",
                },
            },
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }
