"""What obskit does when the operating system says no, each case pinned by a test: a process out
of file descriptors (the metrics port's accept loop), a full disk or a file size limit under the
JSON-lines file, a collector that refuses connections or answers an error, a traces directory
the process cannot write (a read-only root file system, a non-root user in ``/``).

The limits are real (``setrlimit`` in a child process, ``/dev/full``, a path under a regular
file, an unprivileged user), and so are the servers (loopback sockets, the in-test OTLP
receivers). Each of these conditions must be reported once, with its reason, and must not cost
the application anything: no exception, no busy thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace

import obskit
from obskit.exporters.otlp import GrpcSpanSink, HttpSpanSink
from tests.child_process import child_env, run_python
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, closed_port
from tests.unit.test_adversarial_export_review import request


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "obskit"]


def _export_one_span(caplog: pytest.LogCaptureFixture) -> str:
    """End one span, flush, and return the pipeline's export-failure warning."""
    with caplog.at_level(logging.WARNING, logger="obskit"):
        with trace.get_tracer("os").start_as_current_span("s"):
            pass
        assert True is obskit.force_flush(5.0)
    failed = [m for m in _warnings(caplog) if "exporting traces to" in m]
    assert 1 == len(failed), _warnings(caplog)
    return failed[0]


# -- the metrics port out of file descriptors ------------------------------------------------------

_STARVED_SERVER = """
import json, logging, os, resource, socket, sys, time
from obskit import _selfmetrics
from obskit.metrics.exposition import MetricsServer
from obskit.testing import get_sample_value

messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("obskit").addHandler(Keep())
_selfmetrics.current()  # made before the descriptors run out, as configure() makes it

def errors():
    return get_sample_value("obskit_internal_errors_total", {"component": "metrics_server"}) or 0

def exhaust():
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        return held

server = MetricsServer(0, host="127.0.0.1")
scraper, closer = socket.socket(), socket.socket()  # made while a descriptor can be had
scraper.settimeout(10.0)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = exhaust()
scraper.connect(("127.0.0.1", server.port))  # queued: the server cannot accept it
time.sleep(0.3)
before, counted = resource.getrusage(resource.RUSAGE_SELF), errors()
time.sleep(1.0)  # this thread sleeps: the CPU time is the server thread's
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
accepts = errors() - counted
for fd in held:
    os.close(fd)
scraper.sendall(b"GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
answer = b""
while chunk := scraper.recv(65536):
    answer += chunk
# Out of descriptors again, in the longest pause: close() must not wait it out.
held = exhaust()
closer.connect(("127.0.0.1", server.port))
time.sleep(1.7)
started = time.monotonic()
server.close()
took = time.monotonic() - started
print(json.dumps({"cpu": cpu, "accepts": accepts, "status": answer.split(b"\\r\\n")[0].decode(),
                  "took": took, "messages": messages}))
"""


# A bug this test found, since fixed: obskit/metrics/exposition.py MetricsServer: socketserver
# swallows an accept() that fails with EMFILE, and the selector reports the still-queued connection
# at once: 52,000 failed accept4 calls in 2 s, 0.7 of a core in an idle worker, for as long as the
# app held every descriptor; nothing counted or warned
def test_a_metrics_port_out_of_descriptors_pauses_between_accepts_and_recovers() -> None:
    result = json.loads(run_python(_STARVED_SERVER, timeout=60.0))
    # A pause of 0.05 s doubled up to 1 s: a handful of tries in 1.3 s, not tens of thousands.
    assert 1 <= result["accepts"] <= 12, result
    assert result["cpu"] < 0.2, result
    assert "HTTP/1.0 200 OK" == result["status"], result  # the queued scrape, once released
    assert result["took"] < 0.5, result
    starved = [m for m in result["messages"] if "metrics port cannot accept" in m]
    assert 1 == len(starved), result["messages"]
    assert "Too many open files" in starved[0]


# -- why an export failed -------------------------------------------------------------------------

_FILE_SIZE_LIMIT = """
import json, os, resource, signal, sys
from tests.unit.test_adversarial_export_review import request
from obskit.exporters.jsonl import JsonLinesSpanSink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as a full disk gives ENOSPC
sink = JsonLinesSpanSink("traces.jsonl")  # relative: the warning must say where it is
results = [(sink.export(request("a"), 1, 5.0), sink.failure)]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize("traces.jsonl") + 50, hard))
results.append((sink.export(request("b1", "b2"), 2, 5.0), sink.failure))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed again
results.append((sink.export(request("c"), 1, 5.0), sink.failure))
print(json.dumps(results))
"""


# A bug this test found, since fixed: obskit/exporters/jsonl.py _write returned False on a write
# that failed half-way (a full disk, a file size limit) without saying why: the one warning read
# "exporting traces to jsonl failed;" with no reason, or an older failure's
def test_a_write_the_disk_refuses_is_named_and_forgotten_after_a_success(tmp_path: Path) -> None:
    results = json.loads(run_python(_FILE_SIZE_LIMIT, cwd=tmp_path))
    full = str(tmp_path / "traces.jsonl")
    assert [[True, None], [False, f"{full}: File too large"], [True, None]] == results


# A bug this test found, since fixed: obskit/exporters/jsonl.py named the traces file as given,
# relative to a working directory the warning does not show
def test_a_full_device_is_named_with_its_absolute_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir("/dev")
    obskit.configure(service_name="os", traces_file="full", bsp_schedule_delay=30.0)
    assert "(/dev/full: No space left on device)" in _export_one_span(caplog)


# A bug this test found, since fixed: obskit/exporters/otlp.py HttpSpanSink had no ``failure``:
# a refused connection (the collector down, or the process out of descriptors) gave "exporting
# traces to otlp_http failed;" with no reason
def test_a_refused_otlp_http_connection_is_named(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    obskit.configure(
        service_name="os",
        otlp_endpoint=f"http://127.0.0.1:{port}",
        otlp_protocol="http/protobuf",
        otlp_timeout=0.3,
        bsp_schedule_delay=30.0,
    )
    assert f"(127.0.0.1:{port}: Connection refused)" in _export_one_span(caplog)


# A bug this test found, since fixed: as above, for a collector that answers an error status
@pytest.mark.parametrize(("status", "reason"), [(500, "Internal Server Error"), (503, "")])
def test_an_otlp_http_error_status_is_named(
    status: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with OtlpHttpReceiver() as rx:
        rx.fail_next(100, status)
        obskit.configure(
            service_name="os",
            otlp_endpoint=rx.endpoint,
            otlp_protocol="http/protobuf",
            otlp_timeout=0.3,
            bsp_schedule_delay=30.0,
        )
        warning = _export_one_span(caplog)
        obskit.shutdown(timeout=1.0)
    assert f"(HTTP {status} {reason}".rstrip() in warning


# A bug this test found, since fixed: what a sink says of its failure is its latest attempt's, and
# nothing once an export succeeds
def test_an_otlp_http_sinks_failure_is_its_latest_and_cleared_by_a_success() -> None:
    with OtlpHttpReceiver() as rx:
        sink = HttpSpanSink(rx.endpoint + "/v1/traces")
        try:
            rx.fail_next(1, 400)
            assert False is sink.export(request("a"), 1, 2.0)
            assert "HTTP 400 Bad Request" == sink.failure
            assert True is sink.export(request("b"), 1, 2.0)
            assert None is sink.failure
        finally:
            sink.shutdown()


# A bug this test found, since fixed: obskit/exporters/otlp.py GrpcSpanSink had no ``failure``
def test_an_unreachable_otlp_grpc_collector_is_named(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    obskit.configure(
        service_name="os",
        otlp_endpoint=f"http://127.0.0.1:{port}",
        otlp_protocol="grpc",
        otlp_timeout=0.3,
        bsp_schedule_delay=30.0,
    )
    warning = _export_one_span(caplog)
    assert f"(127.0.0.1:{port}: UNAVAILABLE (" in warning


def test_an_otlp_grpc_sinks_failure_is_cleared_by_a_success() -> None:
    with OtlpGrpcReceiver() as rx:
        sink = GrpcSpanSink(rx.endpoint, insecure=True)
        try:
            rx.fail_next(1, grpc.StatusCode.PERMISSION_DENIED)
            assert False is sink.export(request("a"), 1, 2.0)
            assert "PERMISSION_DENIED" in str(sink.failure)
            assert True is sink.export(request("b"), 1, 2.0)
            assert None is sink.failure
        finally:
            sink.shutdown()


# -- a traces directory the process cannot write ---------------------------------------------------

_REMEDY = "OBSKIT_TRACES_FILE"


# A bug this test found, since fixed: an unwritable traces file was reported only at the first
# export (a second or more after start), with the path relative to a directory it did not name
def test_an_unwritable_traces_file_is_warned_about_at_configure_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="obskit"):  # writable: nothing to say
        obskit.configure(service_name="os", traces_file=str(tmp_path / "new" / "t.jsonl"))
        obskit.configure(service_name="os", traces_file="/dev/null")
    assert [] == _warnings(caplog)
    (tmp_path / "file.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "file.txt" / "obskit-traces.jsonl"
    with caplog.at_level(logging.WARNING, logger="obskit"):
        obskit.configure(
            service_name="os", traces_file="file.txt/obskit-traces.jsonl", bsp_schedule_delay=30.0
        )
    at_configure = _warnings(caplog)
    assert 1 == len(at_configure), at_configure
    assert f"traces file {full} cannot be written" in at_configure[0]
    assert f"({tmp_path / 'file.txt'}: Not a directory)" in at_configure[0]
    assert _REMEDY in at_configure[0]
    assert "OTEL_TRACES_EXPORTER=none" in at_configure[0]
    caplog.clear()
    assert f"({full}: " in _export_one_span(caplog)  # os.makedirs: "File exists"


_AS_NOBODY = """
import json, logging, os
import obskit

messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("obskit").addHandler(Keep())
obskit.configure(service_name="ro", logging=False)  # the default file, in the working directory
print(json.dumps(messages), flush=True)
os._exit(0)  # before any export: the warning came from configure()
"""


# A bug this test found, since fixed: the default traces file in a directory a non-root user
# cannot write (the image's WORKDIR, /) failed a second after start, "(obskit-traces.jsonl:
# Permission denied)", with no word of where or what to do
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_the_default_traces_file_in_a_directory_nobody_can_write_is_warned_about() -> None:
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", ""], capture_output=True, check=False)
    if probe.returncode != 0:  # an interpreter under /root (pyenv) that nobody may not run
        pytest.skip(f"this Python does not run as nobody: {probe.stderr.decode()[-200:]}")
    directory = Path(tempfile.mkdtemp(prefix="obskit-ro-"))
    try:
        directory.chmod(0o555)
        done = subprocess.run(
            [*as_nobody, sys.executable, "-c", textwrap.dedent(_AS_NOBODY)],
            cwd=directory,
            env=child_env(HOME="/nonexistent"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)
    assert 0 == done.returncode, done.stderr[-2000:]
    messages = json.loads(done.stdout)
    unwritable = [m for m in messages if "cannot be written" in m]
    assert 1 == len(unwritable), messages
    assert f"traces file {directory / 'obskit-traces.jsonl'} cannot be written" in unwritable[0]
    assert f"({directory}: Permission denied)" in unwritable[0]
    assert _REMEDY in unwritable[0]
