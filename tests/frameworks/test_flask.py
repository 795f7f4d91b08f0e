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


# A bug a review found, since fixed (2026-11-25): the WSGI middleware left the request's
# context current on the calling thread from the app's return until its body was read to the
# end or closed, so a request made while an earlier response was kept partly read -- Flask's
# test client reads the first chunk -- was taken for one nested in it: no span, not counted.
def test_a_request_made_while_an_earlier_response_is_kept_is_counted(cap: Capture) -> None:
    from opentelemetry import trace

    from obskit.testing import samples

    app = Flask(__name__)
    Obskit(app)
    seen: list[int] = []

    @app.get("/a")
    def a() -> str:
        return "a"

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            # Made while the server reads the body: in the request's trace.
            seen.append(trace.get_current_span().get_span_context().trace_id)
            yield "x"

        return app.response_class(chunks())

    client = app.test_client()
    first = client.get("/a")
    assert not trace.get_current_span().get_span_context().is_valid  # not the request's
    second = client.get("/a")
    streamed = client.get("/stream")
    assert b"x" == streamed.get_data()
    for response in (first, second, streamed):
        response.close()
    counts = {labels["route"]: value for labels, value in samples("http_requests_total")}
    assert {"/a": 2.0, "/stream": 1.0} == counts
    spans = {s.span_id: s for s in cap.spans()}.values()  # in the order they ended
    assert ["GET /a", "GET /a", "GET /stream"] == sorted(s.name for s in spans)
    (streamed_span,) = (s for s in spans if s.name == "GET /stream")
    assert [streamed_span.trace_id] == [t.to_bytes(16, "big") for t in seen]


def test_a_body_closed_before_its_end_is_closed_once(cap: Capture) -> None:
    """The server's ``close()`` closes the body; the chunk generator, freed after it, does not
    close it again (Flask's ``call_on_close`` callbacks would run twice)."""
    import gc

    from obskit.testing import samples

    app = Flask(__name__)
    Obskit(app)
    closed: list[str] = []

    @app.get("/stream")
    def stream() -> Any:
        response = app.response_class(iter(["a", "b", "c"]))
        response.call_on_close(lambda: closed.append("closed"))
        return response

    response = app.test_client().get("/stream")  # the test client reads the first chunk
    response.close()
    del response
    gc.collect()
    assert ["closed"] == closed
    assert [1.0] == [
        v for labels, v in samples("http_requests_total") if labels["route"] == "/stream"
    ]
