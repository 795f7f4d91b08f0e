"""Real servers: uvicorn's and gunicorn's access lines are JSON and carry the logged request's
trace id, like the handler's own line.

A FastAPI app under uvicorn and a Flask app under gunicorn (``--logger-class
obskit.gunicorn.Logger --access-logfile -``, one sync worker) run from
``examples/services/logging_app.py`` with ``obskit.configure(logging=True)``; both servers start
at once on free loopback ports with stdout/stderr captured to files, get requests carrying a known
``traceparent``, and are stopped (SIGTERM, then SIGKILL) before their output is parsed.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.loopback import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
APP_MODULE = "examples.services.logging_app"
READY_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
REQUESTS = 3
ACCESS_LOGGER = {"uvicorn": "uvicorn.access", "gunicorn": "gunicorn.access"}


def server_command(server: str, port: int) -> list[str]:
    """The command line that runs the app of ``server`` on ``port`` (``uvicorn-quiet``: uvicorn
    with ``--no-access-log``)."""
    if server.startswith("uvicorn"):
        quiet = ["--no-access-log"] if server == "uvicorn-quiet" else []
        return [
            sys.executable, "-m", "uvicorn", "--factory", f"{APP_MODULE}:create_fastapi_app",
            "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "3",
            *quiet,
        ]  # fmt: skip
    assert "gunicorn" == server
    import gunicorn.config

    argv = [
        sys.executable, "-m", "gunicorn", f"{APP_MODULE}:create_flask_app()",
        "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "sync",
        "--logger-class", "obskit.gunicorn.Logger", "--access-logfile", "-",
        "--graceful-timeout", "3", "--timeout", "30",
    ]  # fmt: skip
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn 24+: one shared socket path by default
    return argv


@dataclass
class Server:
    """One server process and the files its stdout and stderr go to."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    sent: list[tuple[str, int]] = field(default_factory=list)  # (trace id, item id) per request

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """Every output line that is a JSON object (gunicorn's master still logs plain text)."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]


def start(server: str, tmp_path: Path) -> Server:
    port = free_port()
    stdout, stderr = tmp_path / f"{server}.out", tmp_path / f"{server}.err"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("OTEL_", "OBSKIT_")) and not name.upper().endswith("_PROXY")
    }
    env.update(
        OTEL_SERVICE_NAME=f"logs-{server}",
        OBSKIT_TRACES_FILE=str(tmp_path / f"{server}-traces.jsonl"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            server_command(server, port),
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(server, port, process, stdout, stderr)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ready(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"{server.name} exited early:\n{server.output()[-3000:]}")
        try:
            if 200 == get(server.port, "/healthz"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{server.name} not ready in {READY_TIMEOUT}s:\n{server.output()[-3000:]}")


def stop(server: Server) -> None:
    """SIGTERM, then SIGKILL to the server's process group after STOP_TIMEOUT seconds."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Server]:
    """Both servers, after they served REQUESTS traced requests each and were stopped."""
    tmp_path = tmp_path_factory.mktemp("access-logs")
    began = time.monotonic()
    running: dict[str, Server] = {}
    try:
        for name in ("uvicorn", "gunicorn", "uvicorn-quiet"):
            running[name] = start(name, tmp_path)
        for server in running.values():
            wait_ready(server, began + READY_TIMEOUT)
        for server in running.values():
            for item in range(REQUESTS):
                trace_id = secrets.token_hex(16)
                headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
                assert 200 == get(server.port, f"/items/{item}", headers)
                server.sent.append((trace_id, item))
    finally:
        for server in running.values():
            stop(server)
    assert time.monotonic() - began < 40
    return running


@pytest.mark.parametrize("name", ["uvicorn", "gunicorn"])
def test_access_lines_are_json_with_the_request_trace_id(
    servers: dict[str, Server], name: str
) -> None:
    """Each request's access line is JSON from the server's access logger with its trace id."""
    server = servers[name]
    access = [line for line in server.json_lines() if line["logger"] == ACCESS_LOGGER[name]]
    by_path = {}
    for line in access:
        path = line.get("url.path") or line["message"].split('"')[1].split()[1]
        by_path[path] = line
    expected = {f"/items/{item}": trace_id for trace_id, item in server.sent}
    actual = {path: by_path[path].get("trace_id") for path in expected if path in by_path}
    assert expected == actual, server.output()[-4000:]
    for line in access:
        assert "INFO" == line["level"]
        assert f"logs-{name}" == line["service.name"]


@pytest.mark.parametrize("name", ["uvicorn", "gunicorn"])
def test_handler_line_carries_the_same_trace_id(servers: dict[str, Server], name: str) -> None:
    """The app's own line in the handler has the trace id, span and route of its request."""
    server = servers[name]
    lines = server.json_lines()
    handler_lines = {line["item_id"]: line for line in lines if line["logger"] == "logging_app"}
    expected = {item: trace_id for trace_id, item in server.sent}
    assert expected == {item: handler_lines[item]["trace_id"] for item in handler_lines}
    access = {
        line["trace_id"]: line
        for line in lines
        if line["logger"] == ACCESS_LOGGER[name] and "trace_id" in line
    }
    route = "/items/{item_id}" if name == "uvicorn" else "/items/<int:item_id>"
    for line in handler_lines.values():
        # The same server span: the access line is logged in the request's context.
        assert line["span_id"] == access[line["trace_id"]]["span_id"]
        assert (route, "GET") == (line["http.route"], line["http.request.method"])
        assert line["span_id"] == line["request_id"]
        assert 1 == int(line["trace_flags"], 16) & 0x01  # the incoming traceparent was sampled


@pytest.mark.parametrize("name", ["uvicorn", "gunicorn"])
def test_obskit_logger_writes_the_stdlib_line(servers: dict[str, Server], name: str) -> None:
    """``obskit.get_logger``'s line in the handler is the stdlib logger's line of the same call:
    same trace, span, request and route fields; only the timestamp and logger name differ. The
    stdlib logger is a ``DirectLogger`` under the real server (setup_logging made it one)."""
    server = servers[name]
    by_logger: dict[str, dict[int, dict[str, Any]]] = {"logging_app": {}, "logging_app.direct": {}}
    for line in server.json_lines():
        if line["logger"] in by_logger:
            by_logger[line["logger"]][line["item_id"]] = line
    assert {item for _, item in server.sent} == set(by_logger["logging_app.direct"])
    for item, direct in by_logger["logging_app.direct"].items():
        stdlib = dict(by_logger["logging_app"][item])
        for line in (direct, stdlib):
            line.pop("timestamp")
            line.pop("logger")
        assert stdlib == direct
        assert "DirectLogger" == stdlib["logger_class"]


@pytest.mark.parametrize("name", ["uvicorn", "gunicorn"])
def test_every_line_of_the_app_process_is_json(servers: dict[str, Server], name: str) -> None:
    """From the app's import on, every line its process writes is one JSON object (gunicorn's
    master never imports the app and keeps its plain-text lines)."""
    server = servers[name]
    text = [line for line in server.output().splitlines() if line.strip()]
    first_json = next(i for i, line in enumerate(text) if line.startswith("{"))
    master = f"[{server.process.pid}]"
    late_plain = [
        line for line in text[first_json:] if not line.startswith("{") and master not in line
    ]
    assert [] == late_plain
    if name == "uvicorn":  # --factory: the app is built before uvicorn logs anything
        assert 0 == first_json
    lines = server.json_lines()
    assert {ACCESS_LOGGER[name], "logging_app"} <= {line["logger"] for line in lines}
    assert all("timestamp" in line and "message" in line for line in lines)


# A bug this test found, since fixed: obskit.setup_logging made uvicorn.access propagate to its
# JSON handler, so `uvicorn --no-access-log` still wrote an access line for every request
def test_no_access_log_stays_off(servers: dict[str, Server]) -> None:
    """``uvicorn --no-access-log`` at its default level (INFO) with obskit's JSON logging: the
    app's own lines are written, with their trace ids, and no access line."""
    server = servers["uvicorn-quiet"]
    lines = server.json_lines()
    handler_lines = {line["item_id"]: line for line in lines if line["logger"] == "logging_app"}
    assert {item: trace_id for trace_id, item in server.sent} == {
        item: line["trace_id"] for item, line in handler_lines.items()
    }
    assert [] == [line for line in lines if line["logger"] == "uvicorn.access"]
