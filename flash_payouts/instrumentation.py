"""Request counts and latencies of every listener, in one process-wide registry.

The metrics listener exposes this registry beside the ledger families, so the service-health
board sees request rates and latencies of the gateway, the API and /metrics itself. Routes are
labelled by their template (``/boltcard/callback``, ``/api/payouts/{id}``), never by the raw
path, so the label stays a bounded enum whatever clients send.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter.catalogue import HTTP_BUCKETS, spec

# Direct instrumentation would add a `_created` series per label set; the exporter's own
# families have none, and a series per label set is what the cardinality budget counts.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

_requests = spec("flash_http_requests_total")
_duration = spec("flash_http_request_duration_seconds")
_in_flight = spec("flash_http_requests_in_flight")

REQUESTS = Counter(_requests.family, _requests.help, list(_requests.labels), registry=REGISTRY)
DURATION = Histogram(
    _duration.family,
    _duration.help,
    list(_duration.labels),
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(_in_flight.family, _in_flight.help, list(_in_flight.labels), registry=REGISTRY)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INSTRUMENTED = web.AppKey("flash_instrumented_listener", str)


def route_of(request: web.Request) -> str:
    """The matched route's template, or ``unmatched`` (404s must not mint new label values)."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return UNMATCHED
    return resource.canonical


def middleware(listener: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    in_flight = IN_FLIGHT.labels(listener)

    @web.middleware
    async def instrument(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = request.method if request.method in METHODS else "other"
        started = time.perf_counter()
        code = 500
        in_flight.inc()
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            in_flight.dec()
            route = route_of(request)
            DURATION.labels(listener, method, route).observe(time.perf_counter() - started)
            REQUESTS.labels(listener, method, route, str(code)).inc()

    return instrument


def instrument(app: web.Application, listener: str) -> web.Application:
    """Count and time every request of ``app`` as ``listener``; a second call changes nothing."""
    if INSTRUMENTED not in app:
        app[INSTRUMENTED] = listener
        # First, so the time includes every other middleware (errors, auth, rate limits).
        app.middlewares.insert(0, middleware(listener))
    return app
