"""The FastAPI example service (ASGI; outbound calls with ``httpx.AsyncClient``)::

uvicorn --host 127.0.0.1 --port 8002 fastapi_service:app
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from obskit.fastapi import instrument

try:
    from ._common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds
except ImportError:  # run as a top-level module (this directory on sys.path)
    from _common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds

app = FastAPI(title="fastapi_service")
instrument(app)  # options from the environment: OTEL_SERVICE_NAME, OBSKIT_TRACES_FILE, ...


@app.get("/items/{item_id}")
async def item(item_id: int, delay_ms: str | None = None) -> dict[str, Any]:
    """One item, after ``?delay_ms=`` of simulated work."""
    await asyncio.sleep(work_seconds(delay_ms))
    return {"id": item_id, "service": "fastapi"}


@app.get("/call")
async def call(url: str | None = None) -> Any:
    """Call ``?url=`` and answer its status."""
    try:
        target = check_target(url)
    except ForbiddenTarget as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    try:
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as client:
            response = await client.get(target)
    except httpx.HTTPError as exc:
        return JSONResponse({"error": type(exc).__name__}, status_code=502)
    return {"status": response.status_code}
