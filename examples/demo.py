"""A small instrumented service: serves a few requests, then shows its metrics and traces.

Run with ``make demo`` (or ``python examples/demo.py``). No collector is needed: spans go to the
embedded JSON-lines file, ``/metrics`` is served by obskit, and ``obskit traces`` draws the
traces as a waterfall. The service calls itself over HTTP once, so one trace crosses a hop.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import requests
from flask import Flask, abort

import obskit
from obskit.cli import main as obskit_cli
from obskit.flask import Obskit

TRACES = os.path.join(tempfile.mkdtemp(prefix="obskit-demo-"), "traces.jsonl")
LOGS = TRACES.replace("traces.jsonl", "logs.jsonl")

app = Flask("demo")
log = logging.getLogger("demo")
orders = obskit.counter("orders_completed", "Orders completed.", ["payment_method"])
BASE = ""


@obskit.red(trace=True)
def load_item(item_id: int) -> dict[str, Any]:
    """A 'database' call, timed and traced by @obskit.red."""
    time.sleep(0.002)
    if item_id == 13:
        raise LookupError("item 13 is cursed")
    return {"id": item_id, "price": 10 * item_id}


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, Any]:
    try:
        found = load_item(item_id)
    except LookupError:
        log.warning("item lookup failed", extra={"item_id": item_id})
        abort(404)
    log.info("item served", extra={"item_id": item_id})
    return found


@app.post("/orders/<int:item_id>")
def order(item_id: int) -> dict[str, Any]:
    # A downstream call: requests is instrumented, so the trace continues in /items.
    price = requests.get(f"{BASE}/items/{item_id}", timeout=5).json()["price"]
    orders.labels("card").inc()
    log.info("order placed", extra={"item_id": item_id, "card": "4111 1111 1111 1111"})
    return {"item": item_id, "charged": price}


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("something broke")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _ThreadedServer(WSGIServer):
    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


def _get(url: str, method: str = "GET") -> str:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return f"{response.status}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code}"


def main() -> None:
    global BASE
    obskit.configure(
        service_name="demo",
        service_version="1.0.0",
        traces_file=TRACES,
        logging=True,
    )
    obskit.setup_logging(stream=open(LOGS, "w"))  # noqa: SIM115 - closed at exit
    Obskit(app)
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadedServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    BASE = f"http://127.0.0.1:{server.server_port}"
    print(f"demo service on {BASE}\n")
    for method, path in (
        ("GET", "/items/1"),
        ("GET", "/items/2"),
        ("POST", "/orders/3"),
        ("GET", "/items/13"),
        ("GET", "/boom"),
        ("GET", "/no/such/page"),
    ):
        print(f"{method:4} {path:16} -> {_get(BASE + path, method)}")
    with urllib.request.urlopen(BASE + "/metrics") as response:
        text = response.read().decode()
    print("\n--- /metrics (excerpt) ---")
    for line in text.splitlines():
        if line.startswith(
            ("http_requests_total", "function_calls_total", "orders_completed_total")
        ):
            print(line)
    server.shutdown()
    obskit.shutdown(timeout=5)
    print(f"\n--- JSON logs ({LOGS}) ---")
    with open(LOGS) as fh:
        for line in fh.read().splitlines()[:4]:
            print(line[:220])
    print(f"\n--- obskit traces {TRACES} ---")
    obskit_cli(["traces", TRACES, "--width", "30"])


if __name__ == "__main__":
    main()
