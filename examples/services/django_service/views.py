"""The views: an item, and a call to another service."""

from __future__ import annotations

import time

import httpx
from django.http import HttpRequest, JsonResponse

try:
    from .._common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds
except ImportError:  # run as a top-level package (the services directory on sys.path)
    from _common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    """One item, after ``?delay_ms=`` of simulated work."""
    time.sleep(work_seconds(request.GET.get("delay_ms")))
    return JsonResponse({"id": item_id, "service": "django"})


def call(request: HttpRequest) -> JsonResponse:
    """Call ``?url=`` and answer its status."""
    try:
        url = check_target(request.GET.get("url"))
    except ForbiddenTarget as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        with httpx.Client(timeout=CALL_TIMEOUT) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        return JsonResponse({"error": type(exc).__name__}, status=502)
    return JsonResponse({"status": response.status_code})
