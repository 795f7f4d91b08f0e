"""What only the Flask adapter does, through a real Flask app and Flask's test client.

The contract every adapter keeps (spans, propagation, RED metrics, /metrics, streaming,
context) is in test_contract.py, run for Flask too; its app is contract_apps.build_flask_app.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from obskit.flask import Obskit
from obskit.testing import Capture, capture
from tests.frameworks.contract_apps import build_flask_app
from tests.otlp_receiver import attributes as attrs

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured with an in-memory span sink."""
    with capture() as captured:
        yield captured


@pytest.fixture
def app(cap: Capture) -> Flask:
    """The instrumented application (``Obskit(app)``)."""
    app = build_flask_app()
    Obskit(app)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for the instrumented application."""
    return app.test_client()


def get(client: FlaskClient, path: str, **kwargs: Any) -> Any:
    """A GET whose body is read, so the request finishes as with a real server."""
    response = client.get(path, **kwargs)
    response.get_data()
    return response


# W3C propagation: a header sent twice (Django's META cannot hold that).


def test_two_traceparent_headers_start_a_new_trace(client: FlaskClient, cap: Capture) -> None:
    """Two traceparent headers (which Werkzeug joins with a comma) are invalid: a new trace."""
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    headers = [("traceparent", TRACEPARENT), ("traceparent", other)]
    response = get(client, "/items/1", headers=headers)
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert b"" == span.parent_span_id
    assert span.trace_id.hex() not in (TRACE_ID, "1" * 32)


# Installation patterns and options.


def test_init_app_pattern(cap: Capture) -> None:
    """Obskit().init_app(app) instruments the app and registers app.extensions["obskit"]."""
    extension = Obskit()
    app = build_flask_app()
    extension.init_app(app)
    assert extension is app.extensions["obskit"]
    get(app.test_client(), "/items/1")
    assert ["GET /items/<int:item_id>"] == [span.name for span in cap.spans()]


def _resource(cap: Capture) -> dict[str, Any]:
    (request,) = cap.requests()
    return attrs(request.resource_spans[0].resource)


def test_options_from_app_config(any_config_capture: Capture) -> None:
    """app.config["OBSKIT"] options configure obskit: service.name in the exported resource."""
    app = build_flask_app()
    app.config["OBSKIT"] = {"service_name": "flask-from-config", "bsp_schedule_delay": 0.05}
    Obskit(app)
    get(app.test_client(), "/items/1")
    assert "flask-from-config" == _resource(any_config_capture)["service.name"]


def test_keyword_options_override_app_config(any_config_capture: Capture) -> None:
    """Keyword options to Obskit() win over app.config["OBSKIT"]."""
    app = build_flask_app()
    app.config["OBSKIT"] = {"service_name": "from-config", "bsp_schedule_delay": 0.05}
    Obskit(app, service_name="from-keyword")
    get(app.test_client(), "/items/1")
    assert "from-keyword" == _resource(any_config_capture)["service.name"]
