"""The OpenAPI document matches the API: every route is in it, and generated requests (schemathesis)
get no 5xx and only answers that conform to it."""

from __future__ import annotations

import asyncio
import re

import pytest
import schemathesis
from api_fixtures import STORE_A, api_client, seed
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.context import PREFIX
from api.openapi import document

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def test_every_route_is_documented_and_every_documented_route_exists(engine):
    app = create_app(engine)
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical
        assert path.startswith(PREFIX)
        served.add((route.method.lower(), path[len(PREFIX) :]))
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented


async def test_the_document_is_served_without_credentials(engine, aiohttp_client):
    client = await api_client(aiohttp_client, engine)
    r = await client.get(f"{PREFIX}/openapi.json")
    assert r.status == 200
    assert await r.json() == document()


async def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(
    engine, aiohttp_server
):
    s = await seed(engine, n_a=12, n_b=4)
    server = await aiohttp_server(create_app(engine))
    base_url = str(server.make_url(PREFIX))
    schema = schemathesis.openapi.from_dict(document())
    headers = s.auth("A-manager")
    failures: list[str] = []

    def run_operation(operation) -> None:
        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=10)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:1500]}")

    def run_all() -> int:
        count = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/events":
                continue  # an endless stream; covered in test_api_events
            run_operation(operation)
            count += 1
        return count

    count = await asyncio.wait_for(asyncio.to_thread(run_all), timeout=240)
    assert count == len([p for p in document()["paths"] for _ in document()["paths"][p]]) - 1
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("path", sorted(document()["paths"]))
def test_documented_paths_use_the_handlers_parameter_names(path):
    for name in re.findall(r"{(\w+)}", path):
        for op in document()["paths"][path].values():
            assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
    assert STORE_A  # the fixtures' store exists for the run above
