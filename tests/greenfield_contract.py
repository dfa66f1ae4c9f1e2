"""The Greenfield contract kept under tests/contract: the operations the project's client and the
BTCPay simulator use, the JSON Schemas of their requests and answers, and a checker.

The schemas are written from BTCPay's documented models and from what BTCPay 2.4's code does
where its swagger disagrees (see docs/btcpay-simulator.md). The checker sits in front of the
simulator as an aiohttp middleware: every request that reaches it (the client's included) and
every answer it gives is validated, so a field renamed on either side fails.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

CONTRACT = Path(__file__).with_name("contract")
# Answers any authenticated operation may give, and any operation while BTCPay is down.
AUTH_RESPONSES = {"401": "Unauthenticated.json", "403": "MissingPermission.json"}
ANY_RESPONSES = {"503": "ProblemDetails.json"}


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    auth: bool
    request: str | None
    query: Mapping[str, str]
    responses: Mapping[str, str]


@dataclass
class Exchange:
    """One request the checker saw, its answer, and what in each broke the contract."""

    operation: str | None
    method: str
    path: str
    status: int
    request_problems: list[str] = field(default_factory=list)
    answer_problems: list[str] = field(default_factory=list)

    def problems(self, strict_requests: bool) -> list[str]:
        """An invalid request is the simulator's business when it refuses it with a 422 (the
        schema and BTCPay agree), and a broken contract when it is taken; ``strict_requests``
        counts every invalid request (the client must only send valid ones)."""
        refused = self.status == 422 and not strict_requests
        return ([] if refused else self.request_problems) + self.answer_problems


class Contract:
    def __init__(self, folder: Path = CONTRACT) -> None:
        resources = [
            (path.name, DRAFT202012.create_resource(json.loads(path.read_text())))
            for path in sorted((folder / "schemas").glob("*.json"))
        ]
        self.registry = Registry().with_resources(resources)
        self.schema_names = {name for name, _ in resources}
        document = json.loads((folder / "operations.json").read_text())
        self.query_values: dict[str, Any] = document["queryValues"]
        self.operations = {
            (op["method"], op["path"]): Operation(
                id=op["id"],
                method=op["method"],
                path=op["path"],
                auth=op["auth"],
                request=op.get("request"),
                query=op.get("query", {}),
                responses={
                    **op["responses"],
                    **(AUTH_RESPONSES if op["auth"] else {}),
                    **ANY_RESPONSES,
                },
            )
            for op in document["operations"]
        }

    def by_id(self, operation_id: str) -> Operation:
        return next(op for op in self.operations.values() if op.id == operation_id)

    def errors(self, schema: str | Mapping[str, Any], document: Any) -> list[str]:
        """What in ``document`` breaks ``schema`` (a file under schemas/, or a schema)."""
        reference = {"$ref": schema} if isinstance(schema, str) else schema
        validator = Draft202012Validator(reference, registry=self.registry)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        ]

    def check_request(
        self, operation: Operation, query: Mapping[str, str], body: bytes
    ) -> list[str]:
        problems = []
        for name, value in query.items():
            kind = operation.query.get(name)
            if kind is None:
                problems.append(f"query parameter {name!r} is not the operation's")
            else:
                problems += [
                    f"query {name}: {e}" for e in self.errors(self.query_values[kind], value)
                ]
        document = _json(body)
        if operation.request is None:
            if document is not None:
                problems.append("a request body the operation does not take")
        else:
            problems += [f"request {e}" for e in self.errors(operation.request, document)]
        return problems

    def check_response(self, operation: Operation, status: int, body: bytes) -> list[str]:
        schema = operation.responses.get(str(status))
        if schema is None:
            return [f"status {status} is not one the operation answers"]
        return [f"answer {status} {e}" for e in self.errors(schema, _json(body))]

    def middleware(self, seen: list[Exchange]) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Checks every Greenfield call the application answers; the findings go to ``seen``."""

        @web.middleware
        async def check(request: web.Request, handler: Any) -> web.StreamResponse:
            if not request.path.startswith("/api/"):
                return await handler(request)
            route = request.match_info.route.resource
            template = route.canonical if route is not None else request.path
            operation = self.operations.get((request.method, template))
            body = await request.read()
            exchange = Exchange(operation.id if operation else None, request.method, template, 0)
            if operation is None:
                exchange.request_problems.append("not an operation of the contract")
            else:
                exchange.request_problems += self.check_request(operation, request.query, body)
            response = await handler(request)
            exchange.status = response.status
            if operation is not None:
                answer = response.body if isinstance(response, web.Response) else b""
                exchange.answer_problems += self.check_response(
                    operation, response.status, answer if isinstance(answer, bytes) else b""
                )
            seen.append(exchange)
            return response

        return check


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return "<not JSON>"


def violations(seen: list[Exchange], *, strict_requests: bool = False) -> list[str]:
    return [
        f"{e.method} {e.path} -> {e.status}: {problem}"
        for e in seen
        for problem in e.problems(strict_requests)
    ]
