"""The ``obskit`` command line: ``obskit traces`` waterfalls and ``obskit doctor``."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

import obskit
import obskit.testing
from obskit.cli import main
from obskit.cli import traces as traces_cli
from obskit.config import OPTIONS
from tests.loopback import QuietHandler, free_port, serving

MS = 1_000_000


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from a fresh obskit and an environment without obskit/OTel options."""
    for spec in OPTIONS:
        for name in spec.env:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("OBSKIT_TRACES_FILE", str(tmp_path / "default-traces.jsonl"))
    obskit.testing.reset()
    yield
    obskit.testing.reset()


# -- helpers ------------------------------------------------------------------------------------


def _attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def span_line(
    trace_id: str,
    span_id: str,
    name: str,
    start_ms: float,
    end_ms: float,
    *,
    parent: str | None = None,
    service: str = "svc",
    kind: int = 1,
    base: int = 1_700_000_000_000_000_000,
    **extra: Any,
) -> str:
    """One OTLP/JSON span line as the JSON-lines exporter writes it."""
    doc: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(base + int(start_ms * MS)),
        "endTimeUnixNano": str(base + int(end_ms * MS)),
        "resource": {"attributes": [_attr("service.name", service)]},
        "scope": {"name": "test"},
        **extra,
    }
    if parent:
        doc["parentSpanId"] = parent
    return json.dumps(doc)


def tid(n: int) -> str:
    """A 32-hex trace id."""
    return f"{n:032x}"


def sid(n: int) -> str:
    """A 16-hex span id."""
    return f"{n:016x}"


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path`` (one per line) and return it."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def traces_output(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``obskit traces ARGV`` and return (status, stdout)."""
    status = main(["traces", *argv])
    return status, capsys.readouterr().out


def span_lines(output: str) -> list[str]:
    """The span lines of the output (indented by two spaces), without the headers."""
    return [line for line in output.splitlines() if line.startswith("  ")]


def labels(output: str) -> list[str]:
    """The tree column (glyphs, service, name) of each span line."""
    kinds = r"\s{2,}(?:INTERNAL|SERVER|CLIENT|PRODUCER|CONSUMER|UNSPEC)\b"
    return [re.split(kinds, line[2:])[0].rstrip() for line in span_lines(output)]


def generate_two_services(path: Path) -> str:
    """Spans of one trace from two services (two configure calls) in ``path``; its trace id."""
    obskit.configure(service_name="frontend", traces_file=str(path), bsp_schedule_delay=0.05)
    tracer = trace.get_tracer("test")
    t0 = time.time_ns()
    root = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=t0)
    in_root = trace.set_span_in_context(root)
    db = tracer.start_span("SELECT carts", in_root, SpanKind.CLIENT, start_time=t0 + 5 * MS)
    db.end(end_time=t0 + 25 * MS)
    call = tracer.start_span("POST /pay", in_root, SpanKind.CLIENT, start_time=t0 + 30 * MS)
    remote = call.get_span_context()
    call.end(end_time=t0 + 90 * MS)
    root.end(end_time=t0 + 100 * MS)
    obskit.force_flush(5)
    obskit.shutdown(2)
    obskit.testing.reset()

    obskit.configure(service_name="backend", traces_file=str(path), bsp_schedule_delay=0.05)
    tracer = trace.get_tracer("test")
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    server = tracer.start_span("POST /pay", parent, SpanKind.SERVER, start_time=t0 + 35 * MS)
    charge = tracer.start_span("charge", trace.set_span_in_context(server), start_time=t0 + 40 * MS)
    charge.record_exception(ValueError("card declined"))
    charge.set_status(Status(StatusCode.ERROR, "card declined"))
    charge.end(end_time=t0 + 80 * MS)
    server.end(end_time=t0 + 85 * MS)
    obskit.force_flush(5)
    obskit.shutdown(2)
    obskit.testing.reset()
    return f"{remote.trace_id:032x}"


class TtyStringIO(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        """Always a terminal."""
        return True


def traces_args(file: Path, **kw: Any) -> argparse.Namespace:
    """The namespace ``obskit traces`` passes to ``run``."""
    values: dict[str, Any] = {"file": str(file), "trace": None, "last": 10, "width": 40}
    values["no_color"] = False
    values.update(kw)
    return argparse.Namespace(**values)


# -- obskit traces ------------------------------------------------------------------------------


def test_waterfall_of_real_file_two_services(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A generated two-service trace renders as a tree with offsets, durations, bars and errors."""
    path = tmp_path / "spans.jsonl"
    trace_id = generate_two_services(path)

    status, out = traces_output(capsys, str(path), "--no-color")

    assert status == 0, out
    header = out.splitlines()[0]
    assert header.startswith(f"trace {trace_id}")
    assert "frontend, backend" in header
    assert "100.0 ms" in header
    assert "5 spans" in header
    assert "1 error" in header
    lines = span_lines(out)
    assert labels(out) == [
        "[frontend] GET /checkout",
        "├─ SELECT carts",
        "└─ POST /pay",
        "   └─ [backend] POST /pay",
        "      └─ charge",
    ]
    root, db, call, server, charge = lines
    assert "SERVER" in root
    assert "+0.00 ms" in root
    assert "100.0 ms" in root
    assert "█" * 40 in root
    assert "CLIENT" in db
    assert "+5.00 ms" in db
    assert "20.0 ms" in db
    assert "+30.0 ms" in call
    assert "60.0 ms" in call
    assert "+35.0 ms" in server
    assert "50.0 ms" in server
    assert "INTERNAL" in charge
    assert "+40.0 ms" in charge
    assert "40.0 ms" in charge
    # offset 40% .. 80% of a 40-column bar
    assert "·" * 16 + "█" * 16 + "·" * 8 in charge
    assert "✗ ERROR ValueError: card declined" in charge
    assert all("✗" not in line for line in (root, db, call, server))


def test_color_only_on_a_terminal_without_no_color(tmp_path: Path) -> None:
    """ANSI colors (red error lines) appear on a terminal, never with --no-color or a pipe."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [span_line(tid(1), sid(1), "boom", 0, 5, status={"code": 2, "message": "bad"})],
    )
    tty = TtyStringIO()
    assert traces_cli.run(traces_args(path), tty) == 0
    assert "\x1b[31" in tty.getvalue()

    plain = TtyStringIO()
    assert traces_cli.run(traces_args(path, no_color=True), plain) == 0
    assert "\x1b[" not in plain.getvalue()
    assert "✗ ERROR bad" in plain.getvalue()

    piped = io.StringIO()
    assert traces_cli.run(traces_args(path), piped) == 0
    assert "\x1b[" not in piped.getvalue()


def test_trace_filter_by_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trace shows only the traces whose id starts with the given prefix."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            span_line("ab" + "0" * 30, sid(1), "wanted", 0, 1),
            span_line("cd" + "0" * 30, sid(2), "other", 2, 3),
        ],
    )
    status, out = traces_output(capsys, str(path), "--trace", "AB00")
    assert status == 0
    assert "wanted" in out
    assert "other" not in out

    status, out = traces_output(capsys, str(path), "--trace", "ff")
    assert status == 1
    assert "no trace with an id starting with 'ff'" in out


def test_last_shows_most_recent_traces_oldest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--last N keeps the N traces that started last, printed in start order."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            span_line(tid(3), sid(3), "third", 300, 301),
            span_line(tid(1), sid(1), "first", 100, 101),
            span_line(tid(2), sid(2), "second", 200, 201),
        ],
    )
    status, out = traces_output(capsys, str(path), "--last", "2")
    assert status == 0
    assert "first" not in out
    assert out.index("second") < out.index("third")
    assert sum(line.startswith("trace ") for line in out.splitlines()) == 2


def test_malformed_lines_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad lines (not JSON, not an object, missing fields, truncated) are counted, not fatal."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            "not json at all",
            span_line(tid(1), sid(1), "good", 0, 10),
            "[1, 2, 3]",
            "",
            json.dumps({"traceId": tid(1), "spanId": sid(2), "name": "no times"}),
            json.dumps({"traceId": 5, "spanId": sid(3), "startTimeUnixNano": "1"}),
            span_line(tid(1), sid(4), "late", 1, 2)[:40],
            "[" * 100_000,
        ],
    )
    status, out = traces_output(capsys, str(path), "--no-color")
    assert status == 0
    assert "good" in out
    assert out.rstrip().splitlines()[-1].startswith("6 malformed lines skipped (first at ")
    assert f"{path}:1)" in out


def test_missing_file_returns_1_with_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file exits 1 with a message naming the file and how to produce spans."""
    path = tmp_path / "nope.jsonl"
    status, out = traces_output(capsys, str(path))
    assert status == 1
    assert str(path) in out
    assert "obskit.configure(" in out


def test_empty_file_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty file exits 0 and says there are no spans yet."""
    path = write_lines(tmp_path / "spans.jsonl", [])
    status, out = traces_output(capsys, str(path))
    assert status == 0
    assert "no spans" in out


def test_rotated_file_read_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FILE.1 (older spans) is read before FILE, and a trace split across both is joined."""
    path = tmp_path / "spans.jsonl"
    write_lines(
        tmp_path / "spans.jsonl.1",
        [
            span_line(tid(1), sid(1), "old-trace", 0, 5),
            span_line(tid(2), sid(3), "split-child", 12, 14, parent=sid(2)),
        ],
    )
    write_lines(path, [span_line(tid(2), sid(2), "split-root", 10, 20)])
    status, out = traces_output(capsys, str(path), "--no-color")
    assert status == 0
    assert out.index("old-trace") < out.index("split-root") < out.index("split-child")
    assert "└─ split-child" in out
    assert "2 spans" in out


def test_rotated_file_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only FILE.1 present (just after rotation) still shows its spans."""
    path = tmp_path / "spans.jsonl"
    write_lines(tmp_path / "spans.jsonl.1", [span_line(tid(1), sid(1), "rotated", 0, 5)])
    status, out = traces_output(capsys, str(path))
    assert status == 0
    assert "rotated" in out


def test_missing_parent_and_cycles_become_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spans whose parent is not in the file, or that form a parent cycle, are shown as roots."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            span_line(tid(1), sid(1), "orphan", 0, 10, parent=sid(99)),
            span_line(tid(1), sid(2), "loop-a", 2, 4, parent=sid(3)),
            span_line(tid(1), sid(3), "loop-b", 3, 5, parent=sid(2)),
            span_line(tid(1), sid(4), "self", 6, 7, parent=sid(4)),
        ],
    )
    status, out = traces_output(capsys, str(path), "--no-color")
    assert status == 0
    # proper roots first by start, then what is only reachable through a cycle
    assert labels(out) == ["[svc] orphan", "[svc] self", "[svc] loop-a", "└─ loop-b"]
    assert "incomplete: parent of 1 span missing" in out


def test_default_file_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without FILE, the configured traces_file (OBSKIT_TRACES_FILE) is read."""
    path = write_lines(tmp_path / "env.jsonl", [span_line(tid(1), sid(1), "from-env", 0, 1)])
    monkeypatch.setenv("OBSKIT_TRACES_FILE", str(path))
    status, out = traces_output(capsys)
    assert status == 0
    assert "from-env" in out


def test_traces_bad_config_returns_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without FILE, a bad configuration is reported and exits 2."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "bogus")
    status, out = traces_output(capsys)
    assert status == 2
    assert "bogus" in out


def test_untrusted_text_cannot_inject_escapes_and_ascii_output_works(tmp_path: Path) -> None:
    """Control characters in span names are escaped; an ASCII-only output gets ASCII glyphs."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            span_line(tid(1), sid(1), "root\x1b[2Jé", 0, 10),
            span_line(tid(1), sid(2), "child", 1, 2, parent=sid(1)),
        ],
    )
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    assert traces_cli.run(traces_args(path), out) == 0
    out.flush()
    text = raw.getvalue().decode("ascii")
    assert "\x1b" not in text
    assert "root\\x1b[2J?" in text
    assert "`- child" in text
    assert "#" * 40 in text


def test_python_m_obskit_traces(tmp_path: Path) -> None:
    """``python -m obskit traces FILE`` renders the file and exits 0."""
    path = write_lines(
        tmp_path / "spans.jsonl",
        [
            span_line(tid(1), sid(1), "GET /", 0, 10, kind=2),
            span_line(tid(1), sid(2), "query", 1, 5, parent=sid(1), kind=3),
        ],
    )
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "obskit", "traces", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"trace {tid(1)}" in proc.stdout
    assert "└─ query" in proc.stdout
    assert "\x1b[" not in proc.stdout


# -- obskit doctor ------------------------------------------------------------------------------


def config_table(output: str) -> dict[str, tuple[str, str]]:
    """option -> (value, source) from doctor's configuration table."""
    rows = {}
    for line in output.split("\n\n")[0].splitlines()[1:]:
        cells = line.split()
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``obskit doctor ARGV`` and return (status, stdout)."""
    status = main(["doctor", *argv])
    return status, capsys.readouterr().out


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny OTLP/HTTP collector answering 200 on /v1/traces (404 elsewhere); its base URL and
    the requests it received."""
    received: list[dict[str, Any]] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            received.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}", received


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections and never answers; closed after the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        sock.close()


def test_doctor_prints_sources(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each option is listed with its value and source: env:VARNAME, derived or default."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    status, out = doctor(capsys)
    assert status == 0, out
    table = config_table(out)
    assert table["service_name"] == ("checkout", "env:OTEL_SERVICE_NAME")
    assert table["service_version"] == ("0.0.0", "default")
    assert table["traces_exporter"] == ("jsonl", "derived")
    assert table["traces_file"][1] == "env:OBSKIT_TRACES_FILE"
    assert "argument" not in {source for _, source in table.values()}
    assert "OK    traces: file " in out


def test_doctor_ok_against_local_collector_and_masks_headers(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[dict[str, Any]]],
) -> None:
    """An endpoint answering 200 on /v1/traces is OK; header values are sent but shown as ***."""
    url, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret,x-tenant=acme")
    status, out = doctor(capsys, "--timeout", "5")
    assert status == 0, out
    assert config_table(out)["otlp_headers"] == (
        "api-key=***,x-tenant=***",
        "env:OTEL_EXPORTER_OTLP_HEADERS",
    )
    assert "s3cret" not in out
    assert "acme" not in out
    assert f"OK    traces: {url}/v1/traces answered 200" in out
    (request,) = received
    assert request["path"] == "/v1/traces"
    assert request["body"] == b""
    assert request["headers"]["Content-Type"] == "application/x-protobuf"
    assert request["headers"]["api-key"] == "s3cret"


def test_doctor_fails_on_http_error_status(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[dict[str, Any]]],
) -> None:
    """A non-2xx answer is FAIL with the status."""
    url, _ = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url + "/wrong")
    status, out = doctor(capsys)
    assert status == 1
    assert "FAIL  traces:" in out
    assert "HTTP 404" in out


def test_doctor_fails_on_closed_port(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening on the endpoint's port is FAIL (connection refused)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    status, out = doctor(capsys)
    assert status == 1
    assert "FAIL  traces:" in out
    assert "refused" in out


def test_doctor_fails_without_hanging_on_silent_endpoint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, silent_listener: int
) -> None:
    """An endpoint that accepts and never answers is FAIL once --timeout passes, not a hang."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent_listener}")
    started = time.monotonic()
    status, out = doctor(capsys, "--timeout", "0.5")
    assert time.monotonic() - started < 1.5
    assert status == 1
    assert "FAIL  traces:" in out
    assert "no answer within 0.5s" in out


@pytest.fixture
def grpc_collector() -> Iterator[int]:
    """A gRPC server implementing TraceService/Export (bytes in, empty response out)."""
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait(5)


def test_doctor_grpc_ok_and_silent(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    grpc_collector: int,
    silent_listener: int,
) -> None:
    """OTLP/gRPC: OK against a TraceService, FAIL within the timeout against a silent port."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{grpc_collector}")
    status, out = doctor(capsys, "--timeout", "5")
    assert status == 0, out
    assert "accepted an empty Export" in out

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent_listener}")
    started = time.monotonic()
    status, out = doctor(capsys, "--timeout", "0.5")
    assert time.monotonic() - started < 1.5
    assert status == 1
    assert "FAIL  traces:" in out


def test_doctor_grpc_closed_port(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTLP/gRPC with nothing listening is FAIL (connection refused)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    status, out = doctor(capsys)
    assert status == 1
    assert "refused" in out


def test_doctor_bad_env_returns_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad environment value is printed (option, value, allowed) and exits 2."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "bogus")
    status, out = doctor(capsys)
    assert status == 2
    assert "sampler_arg" in out
    assert "'bogus'" in out
    assert "OTEL_TRACES_SAMPLER_ARG" in out


def test_doctor_multiproc_dir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR is OK when a writable directory, FAIL when missing."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    status, out = doctor(capsys)
    assert status == 0, out
    assert f"OK    multiproc_dir: {tmp_path} is writable" in out

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    status, out = doctor(capsys)
    assert status == 1
    assert "FAIL  multiproc_dir:" in out
    assert "does not exist" in out


def test_doctor_traces_file_under_a_regular_file_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A traces file whose directory cannot be created is FAIL."""
    (tmp_path / "plain").write_text("x")
    monkeypatch.setenv("OBSKIT_TRACES_FILE", str(tmp_path / "plain" / "sub" / "t.jsonl"))
    status, out = doctor(capsys)
    assert status == 1
    assert "FAIL  traces: cannot create" in out


def test_doctor_masks_url_passwords_and_query_values() -> None:
    """A collector URL's password and query values (tokens) are shown as ***."""
    from obskit.cli.doctor import format_value

    shown = format_value("otlp_endpoint", "https://u:pw@collector:4318/v1?api_key=s3cr3t&flag")
    assert "pw" not in shown
    assert "s3cr3t" not in shown
    assert "https://u:***@collector:4318/v1?api_key=***&flag" == shown


def test_traces_blank_trace_filter_is_no_filter() -> None:
    """``--trace " "`` selects nothing special: the --last most recent traces."""
    from obskit.cli.traces import Span, group_traces, select_traces

    spans = [
        Span(f"{i:032x}", f"{i:016x}", None, "op", 2, i * 10, i * 10 + 5, "svc")
        for i in range(1, 6)
    ]
    traces = group_traces(spans)
    assert select_traces(traces, " ", 2) == traces[-2:]
    assert [f"{3:032x}"] == [t.trace_id for t in select_traces(traces, f" {3:032X} ", 2)]


# A gap a new user's read-through found, since filled: doctor checked the traces endpoint only;
# OTLP metrics and logs aimed at a dead port were "No problems found", and not shown
def test_doctor_shows_and_checks_the_otlp_metrics_and_logs_endpoints(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = collector
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", dead + "/v1/logs")
    status, out = doctor(capsys, "--timeout", "5")
    assert 1 == status, out
    assert f"Metrics go to: {url}/v1/metrics (http/protobuf)" in out
    assert f"Logs go to: {dead}/v1/logs (http/protobuf)" in out
    # The tiny collector answers 404 off /v1/traces: the metrics request was sent there.
    assert f"FAIL  metrics: {url}/v1/metrics answered HTTP 404" in out
    assert "FAIL  logs:" in out
    assert "refused" in out
    assert ["/v1/traces", "/v1/metrics"] == [r["path"] for r in received]
    assert "s3cret" == received[1]["headers"]["api-key"]
    assert "s3cret" not in out


def test_doctor_names_the_protocols_port_when_a_grpc_endpoint_is_on_the_http_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC aimed at :4318 (OTLP/HTTP's port) fails with a hint, not just "refused"."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    status, out = doctor(capsys, "--timeout", "2")
    assert 1 == status
    assert "(4318 is OTLP's http/protobuf port; grpc listens on 4317)" in out


# A gap a new user's read-through found, since filled: OBSKIT_SERVICE_NAME (there is no such
# variable) or a misspelled OBSKIT_* variable was ignored without a word
def test_unknown_obskit_variables_are_reported_with_the_name_meant(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import obskit

    monkeypatch.setenv("OBSKIT_SERVICE_NAME", "typo-service")
    monkeypatch.setenv("OBSKIT_METRIC_PATH", "/m")
    monkeypatch.setenv("OBSKIT_WHATEVER", "1")
    status, out = doctor(capsys)
    assert 0 == status, out
    assert (
        "WARN  variables: not read by obskit: OBSKIT_METRIC_PATH (did you mean "
        "OBSKIT_METRICS_PATH?); OBSKIT_SERVICE_NAME (did you mean OTEL_SERVICE_NAME?); "
        "OBSKIT_WHATEVER"
    ) in out
    with caplog.at_level(logging.WARNING, logger="obskit"):
        obskit.configure(traces_exporter="none")
        obskit.configure(traces_exporter="none", service_version="2")
    warned = [
        r.getMessage() for r in caplog.records if "not a variable obskit reads" in r.getMessage()
    ]
    assert 3 == len(warned), warned
    assert any("did you mean OTEL_SERVICE_NAME?" in message for message in warned)


@pytest.mark.parametrize(
    ("sampler", "shown"),
    [
        ("parentbased_traceidratio", "1 (the sampler's default)"),
        ("adaptive", "0.001 (the sampler's default)"),
        ("ratelimited", "100 (the sampler's default)"),
        ("always_on", "-"),
    ],
)
def test_doctor_shows_the_argument_a_sampler_takes_by_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sampler: str, shown: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    status, out = doctor(capsys)
    assert 0 == status, out
    (row,) = [
        line.split(None, 1)[1] for line in out.splitlines() if line.split()[:1] == ["sampler_arg"]
    ]
    assert shown == row.rsplit(None, 1)[0].strip()
    assert row.endswith("default")


# A gap a new user's read-through found, since filled: `obskit traces a b` was a usage error, so
# two local services writing files of their own could not show a trace that crossed them
def test_traces_reads_several_files_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = write_lines(
        tmp_path / "orders.jsonl",
        [
            span_line(tid(1), sid(1), "GET /checkout", 0, 100, service="orders", kind=2),
            span_line(tid(1), sid(2), "POST /pay", 10, 80, parent=sid(1), service="orders", kind=3),
        ],
    )
    payments = write_lines(
        tmp_path / "payments.jsonl",
        [span_line(tid(1), sid(3), "POST /pay", 15, 75, parent=sid(2), service="payments", kind=2)],
    )
    status, out = traces_output(capsys, str(orders), str(payments))
    assert 0 == status, out
    assert ["[orders] GET /checkout", "└─ POST /pay", "   └─ [payments] POST /pay"] == labels(out)
    status, out = traces_output(capsys, str(orders), str(tmp_path / "missing.jsonl"))
    assert 1 == status
    assert "missing.jsonl" in out


# Found by a review of the doctor change, since fixed: a scheme-less gRPC endpoint
# (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=host:port, which the SDK's gRPC exporter takes as an
# insecure target) was read as a URL whose scheme is the host: doctor checked localhost:4317
def test_doctor_checks_a_scheme_less_grpc_signal_endpoint_where_the_sdk_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obskit._otlp_signals import destination
    from obskit.config import load_config

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector.internal:4317")
    url, protocol, _ = destination(load_config(), "metrics")
    assert ("http://collector.internal:4317", "grpc") == (url, protocol)
