"""The Flask example service (WSGI; outbound calls with ``requests``)::

gunicorn -w 2 -b 127.0.0.1:8001 flask_service:app
"""

from __future__ import annotations

import time
from typing import Any

import requests
from flask import Flask, jsonify, request

from obskit.flask import Obskit

try:
    from ._common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds
except ImportError:  # run as a top-level module (this directory on sys.path)
    from _common import CALL_TIMEOUT, ForbiddenTarget, check_target, work_seconds

app = Flask("flask_service")
Obskit(app)  # options from the environment: OTEL_SERVICE_NAME, OBSKIT_TRACES_FILE, ...


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, Any]:
    """One item, after ``?delay_ms=`` of simulated work."""
    time.sleep(work_seconds(request.args.get("delay_ms")))
    return {"id": item_id, "service": "flask"}


@app.get("/call")
def call() -> Any:
    """Call ``?url=`` and answer its status."""
    try:
        url = check_target(request.args.get("url"))
    except ForbiddenTarget as exc:
        return jsonify(error=str(exc)), 400
    try:
        response = requests.get(url, timeout=CALL_TIMEOUT)
    except requests.RequestException as exc:
        return jsonify(error=type(exc).__name__), 502
    return {"status": response.status_code}
