"""Views of the test project."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from opentelemetry import trace

from obskit.testing import get_sample_value

CHUNK_DELAY = 0.05


class Boom(Exception):
    """The exception the failing view raises."""


def _current_span_id() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """A matched route with a typed converter; reports the current span and the in-flight gauge."""
    labels = {"method": "GET", "route": "/items/<int:item_id>"}
    in_flight = get_sample_value("http_requests_in_flight", labels)
    return JsonResponse({"id": item_id, "span_id": _current_span_id(), "in_flight": in_flight})


def boom(request: HttpRequest) -> HttpResponse:
    """Raises; Django answers 500."""
    raise Boom("kaboom")


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


async def async_item(request: HttpRequest, item_id: int) -> JsonResponse:
    """An async view; reports the span current inside it."""
    await asyncio.sleep(0)
    return JsonResponse({"id": item_id, "span_id": _current_span_id()})


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


def healthz(request: HttpRequest) -> HttpResponse:
    """A health endpoint (excluded from telemetry by default)."""
    return HttpResponse("ok")


def private(request: HttpRequest) -> HttpResponse:
    """A path the tests exclude through the excluded_paths option."""
    return HttpResponse("private")
