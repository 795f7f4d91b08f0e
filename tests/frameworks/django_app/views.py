"""Views of the test project: the contract routes (see tests/frameworks/contract_apps.py) and
Django's async variants."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_http_methods

from tests.frameworks.contract_apps import CHUNK_DELAY, Boom, current_ids, fail, in_flight

ITEM_ROUTE = "/items/<int:item_id>"


@require_http_methods(["GET", "POST", "FOOBAR"])
def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """A matched route with a typed converter; reports the current span and the in-flight gauge."""
    return JsonResponse({"id": item_id, "in_flight": in_flight(ITEM_ROUTE), **current_ids()})


def boom(request: HttpRequest) -> HttpResponse:
    """Raises Boom; Django answers 500."""
    return fail(Boom("kaboom"))


def value_error(request: HttpRequest) -> HttpResponse:
    """Raises a built-in exception; Django answers 500."""
    return fail(ValueError("kaboom"))


def unavailable(request: HttpRequest) -> HttpResponse:
    """A 5xx answered without an exception."""
    return HttpResponse("try later", status=503)


def catch_all(request: HttpRequest, rest: str) -> HttpResponse:
    """Every path under /files/ is one route."""
    return HttpResponse(rest)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """Three chunks, each after CHUNK_DELAY seconds."""

    def chunks() -> Iterator[bytes]:
        for index in range(3):
            time.sleep(CHUNK_DELAY)
            yield b"chunk %d\n" % index

    return StreamingHttpResponse(chunks())


def stream_ids(request: HttpRequest) -> StreamingHttpResponse:
    """Two chunks, each the trace id current while it was produced."""

    def chunks() -> Iterator[bytes]:
        for _ in range(2):
            yield (current_ids()["trace_id"] + "\n").encode()

    return StreamingHttpResponse(chunks())


async def async_item(request: HttpRequest, item_id: int) -> JsonResponse:
    """An async view; reports the span current inside it."""
    await asyncio.sleep(0)
    return JsonResponse({"id": item_id, **current_ids()})


async def async_boom(request: HttpRequest) -> HttpResponse:
    """An async view that raises."""
    await asyncio.sleep(0)
    raise Boom("async kaboom")


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Three chunks from an async iterator, each after CHUNK_DELAY seconds."""

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            await asyncio.sleep(CHUNK_DELAY)
            yield b"chunk %d\n" % index

    return StreamingHttpResponse(chunks())


async def async_slow(request: HttpRequest) -> HttpResponse:
    """An async view slower than any test waits for: a client that leaves gets no answer."""
    await asyncio.sleep(30)
    return HttpResponse("late")


def healthz(request: HttpRequest) -> HttpResponse:
    """A health endpoint (excluded from telemetry by default)."""
    return HttpResponse("ok")


def private(request: HttpRequest) -> HttpResponse:
    """A path the tests exclude through the excluded_paths option."""
    return HttpResponse("private")
