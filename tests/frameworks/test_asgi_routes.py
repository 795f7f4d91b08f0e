"""How the ASGI middleware learns the route template before the endpoint runs.

Under FastAPI it listens to FastAPI's own route-selection hook; under plain Starlette, or a
FastAPI app that mounts a non-FastAPI app, it watches ``scope["route"]`` through a dict subclass.
Both must give full templates (mount and router prefixes) and count the running request in flight
under its route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from obskit import _state
from obskit.asgi import ObskitMiddleware
from obskit.fastapi import instrument
from obskit.testing import Capture, capture, get_sample_value
from tests.frameworks.helpers import needs_fastapi_telemetry

SERVER = 2


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture(service_name="asgi-routes") as captured:
        yield captured


async def _in_flight(request: Request) -> JSONResponse:
    """The in-flight gauge of the route this handler serves, as seen from inside it."""
    route = request.scope["obskit.request"].route
    value = get_sample_value("http_requests_in_flight", {"method": "GET", "route": route})
    return JSONResponse({"route": route, "in_flight": value})


def _starlette_routes() -> list[Any]:
    return [
        Route("/items/{item_id}", _in_flight),
        Mount(
            "/api",
            routes=[
                Route("/users/{user_id}", _in_flight),
                Mount("/v2", routes=[Route("/orders/{order_id}", _in_flight)]),
            ],
        ),
    ]


def _middleware(app: Any) -> ObskitMiddleware:
    """The ObskitMiddleware instance in ``app``'s (built) middleware chain."""
    level = getattr(app, "middleware_stack", None) or app
    while level is not None and not isinstance(level, ObskitMiddleware):
        level = getattr(level, "app", None)
    assert isinstance(level, ObskitMiddleware)
    return level


def _requests_total() -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in _state.registry.collect()
        for sample in family.samples
        if sample.name == "http_requests_total"
    }


def _check(client: TestClient, cap: Capture, paths: dict[str, str]) -> None:
    for path, route in paths.items():
        response = client.get(path)
        assert 200 == response.status_code, path
        assert {"route": route, "in_flight": 1.0} == response.json(), path
        labels = {"method": "GET", "route": route}
        assert 0.0 == get_sample_value("http_requests_in_flight", labels)
    assert {(route, "200"): 1.0 for route in paths.values()} == _requests_total()
    names = sorted(span.name for span in cap.spans() if span.kind == SERVER)
    assert sorted(f"GET {route}" for route in paths.values()) == names


STARLETTE_PATHS = {
    "/items/918273": "/items/{item_id}",
    "/api/users/918273": "/api/users/{user_id}",
    "/api/v2/orders/918273": "/api/v2/orders/{order_id}",
}


def test_starlette_routes_and_mounts_are_learnt_from_the_scope(cap: Capture) -> None:
    """Plain Starlette: full templates through nested mounts, in flight while running."""
    app = Starlette(routes=_starlette_routes(), middleware=[Middleware(ObskitMiddleware)])
    with TestClient(app) as client:
        _check(client, cap, STARLETTE_PATHS)
        assert _middleware(app)._fastapi_record is None


def _fastapi_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/api/v1")
    router.add_api_route("/users/{user_id}", _in_flight)
    app.include_router(router, prefix="/tenants/{tenant}")
    sub = FastAPI()
    sub.add_api_route("/things/{thing_id}", _in_flight)
    app.mount("/sub", sub)
    return app


FASTAPI_PATHS = {
    "/tenants/acme/api/v1/users/918273": "/tenants/{tenant}/api/v1/users/{user_id}",
    "/sub/things/918273": "/sub/things/{thing_id}",
}


@needs_fastapi_telemetry
def test_fastapi_reports_routes_through_its_own_hook(cap: Capture) -> None:
    """instrument(FastAPI): the route comes from FastAPI's route-selection hook."""
    app = instrument(_fastapi_app())
    with TestClient(app) as client:
        _check(client, cap, FASTAPI_PATHS)
        assert _middleware(app)._fastapi_record is not None


@needs_fastapi_telemetry
def test_middleware_around_a_fastapi_app_uses_the_hook(cap: Capture) -> None:
    """ObskitMiddleware(FastAPI()): the hook too, and FastAPI's native span stays off."""
    app = ObskitMiddleware(_fastapi_app())
    assert app._fastapi_record is not None
    with TestClient(app) as client:  # type: ignore[arg-type]
        _check(client, cap, FASTAPI_PATHS)


def test_fastapi_mounting_a_starlette_app_watches_the_scope(cap: Capture) -> None:
    """A non-FastAPI app under a FastAPI mount would only be "/legacy/{path}" to FastAPI's
    hook: the scope is watched instead, and its routes keep their full templates."""
    app = _fastapi_app()
    app.mount("/legacy", Starlette(routes=_starlette_routes()))
    instrument(app)
    paths = dict(FASTAPI_PATHS)
    paths.update({f"/legacy{path}": f"/legacy{route}" for path, route in STARLETTE_PATHS.items()})
    with TestClient(app) as client:
        _check(client, cap, paths)
        assert _middleware(app)._fastapi_record is None


def test_fastapi_slash_redirect_is_labelled_with_its_target_route(cap: Capture) -> None:
    """FastAPI answers "/tenants/acme/api/v1/users/7/" with a redirect and reports the route it
    redirects to, as its own telemetry does: a bounded label, not the raw path."""
    app = instrument(_fastapi_app())
    with TestClient(app, follow_redirects=False) as client:
        response = client.get("/tenants/acme/api/v1/users/918273/")
    assert 307 == response.status_code
    assert {("/tenants/{tenant}/api/v1/users/{user_id}", "307"): 1.0} == _requests_total()


@needs_fastapi_telemetry
def test_an_unexpected_fastapi_record_falls_back_to_watching_the_scope(
    cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If FastAPI's private per-request record is not what obskit expects (another release),
    the middleware watches the scope instead, and routes are still learnt."""
    import dataclasses

    import fastapi.telemetry._api as fastapi_telemetry

    @dataclasses.dataclass
    class Other:
        span: Any = None

    monkeypatch.setattr(fastapi_telemetry, "_RequestTelemetry", Other)
    app = instrument(_fastapi_app())
    with TestClient(app) as client:
        _check(client, cap, FASTAPI_PATHS)
        assert _middleware(app)._fastapi_record is None
