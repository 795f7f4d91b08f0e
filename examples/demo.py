"""A small instrumented service: serves a few requests, then shows its metrics and traces.

Run with ``make demo`` (or ``python examples/demo.py``). No collector is needed: spans go to the
embedded JSON-lines file and ``obskit traces`` draws them as a waterfall.
"""

from __future__ import annotations

import os
import tempfile
import threading
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry import trace
from prometheus_client import Counter, Histogram

import obskit
from obskit import _state
from obskit.cli import main as obskit_cli
from obskit.metrics.exposition import render

TRACES = os.path.join(tempfile.mkdtemp(prefix="obskit-demo-"), "traces.jsonl")
obskit.configure(service_name="demo", service_version="1.0.0", traces_file=TRACES)
tracer = trace.get_tracer("demo")
REQUESTS = Counter(
    "http_requests", "HTTP requests.", ["method", "route", "status"], registry=_state.registry
)
DURATION = Histogram(
    "http_request_duration_seconds", "Duration.", ["method", "route"], registry=_state.registry
)


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ["PATH_INFO"]
    if path == "/metrics":
        body, content_type = render(environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]
    route = "/items/{id}" if path.startswith("/items/") else "/unmatched"
    with (
        DURATION.labels("GET", route).time(),
        tracer.start_as_current_span(
            f"GET {route}", kind=trace.SpanKind.SERVER, attributes={"http.route": route}
        ) as span,
    ):
        with tracer.start_as_current_span("load item"):
            item = path.rsplit("/", 1)[-1]
        status = "404 Not Found" if item == "missing" else "200 OK"
        if item == "missing":
            span.set_status(trace.StatusCode.ERROR, "item not found")
        REQUESTS.labels("GET", route, status[:3]).inc()
        start_response(status, [("Content-Type", "text/plain")])
        return [f"item {item}\n".encode()]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    print(f"demo service on {base}")
    for path in ("/items/1", "/items/2", "/items/missing", "/items/3"):
        try:
            with urllib.request.urlopen(base + path) as response:
                print(f"GET {path} -> {response.status}")
        except urllib.error.HTTPError as exc:
            print(f"GET {path} -> {exc.code}")
    with urllib.request.urlopen(base + "/metrics") as response:
        text = response.read().decode()
    print("\n--- /metrics (excerpt) ---")
    for line in text.splitlines():
        if line.startswith(("http_requests_total", "obskit_spans")):
            print(line)
    server.shutdown()
    obskit.shutdown(timeout=5)
    print(f"\n--- obskit traces {TRACES} ---")
    obskit_cli(["traces", TRACES])


if __name__ == "__main__":
    main()
