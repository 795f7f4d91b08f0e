"""Adversarial review of configuration, the CLI, metrics exposition and multi-process metrics.

Tests marked ``xfail(strict=True)`` pin an obskit bug still open (the reason names it); a comment
above a test names a bug it found that has since been fixed; the others cover behaviour no other
test covers. Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import obskit
from obskit import _runtime, _state
from obskit.cli import doctor as doctor_cli
from obskit.cli import main
from obskit.cli import traces as traces_cli
from obskit.config import ConfigError, load_config
from obskit.metrics.exposition import render
from tests.child_process import child_env
from tests.loopback import QuietHandler, free_port, serving

PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Spans file in tmp (tests/conftest.py keeps the machine's settings out)."""
    monkeypatch.setenv("OBSKIT_TRACES_FILE", str(tmp_path / "traces.jsonl"))


def _python(code: str, *args: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (process-wide state stays out of this one)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(**env),
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    return proc.stdout


class _Collector:
    """A loopback OTLP/HTTP receiver recording (path, headers) of each POST."""

    def __init__(self) -> None:
        received: list[tuple[str, dict[str, str]]] = []
        self.received = received

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._serving = serving(Handler)
        self.url = f"http://127.0.0.1:{self._serving.__enter__()}"

    def close(self) -> None:
        self._serving.__exit__(None, None, None)


@pytest.fixture
def collectors() -> Iterator[tuple[_Collector, _Collector]]:
    """Two independent OTLP/HTTP receivers."""
    a, b = _Collector(), _Collector()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _cardinality(body_chunks: Iterator[bytes] | list[bytes], timeout: float) -> int:
    """``obskit cardinality`` against a loopback server answering 200 and ``body_chunks`` (no
    length)."""
    chunks = body_chunks

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except OSError:  # the client gave up
                pass
            self.close_connection = True

    with serving(Handler) as port:
        return main(["cardinality", f"http://127.0.0.1:{port}/metrics", "--timeout", str(timeout)])


def _strict_utf8_out() -> tuple[io.BytesIO, io.TextIOWrapper]:
    """An output like a terminal's stdout under a UTF-8 locale (errors='strict')."""
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8")


def _traces_args(file: str, **kw: Any) -> argparse.Namespace:
    values: dict[str, Any] = {"file": file, "trace": None, "last": 10, "width": 20}
    values["no_color"] = True
    values.update(kw)
    return argparse.Namespace(**values)


def _span(trace_id: str, name: str, start: str = "1000", end: str = "2000") -> str:
    return json.dumps(
        {
            "traceId": trace_id,
            "spanId": "00000000000000a1",
            "name": name,
            "kind": 2,
            "startTimeUnixNano": start,
            "endTimeUnixNano": end,
        }
    )


# =================================================================================================
# configuration
# =================================================================================================


def test_otlp_traces_endpoint_per_signal_verbatim_generic_gets_signal_path() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is (even beside the generic one, even with a
    trailing slash); the generic one keeps its base path and gets ``/v1/traces`` once."""
    both = load_config(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": " https://traces:443/custom/ ",
        }
    )
    assert ("otlp", "https://traces:443/custom/") == (both.traces_exporter, both.traces_endpoint)
    sink = _runtime.make_sink(both)
    assert "/custom/" == sink._path  # type: ignore[union-attr]
    generic = load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318/otlp/"})
    assert "http://generic:4318/otlp/v1/traces" == generic.traces_endpoint
    grpc = load_config(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://g:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "GRPC"}
    )
    assert ("grpc", "http://g:4317") == (grpc.otlp_protocol, grpc.traces_endpoint)


def test_resource_attributes_decoding_and_service_name_precedence() -> None:
    """OTEL_RESOURCE_ATTRIBUTES: percent-decoded keys and values, raw '=' kept in a value, blanks
    and trailing commas ignored, later duplicates win; OTEL_SERVICE_NAME beats its service.name
    in the resource actually sent."""
    env = {
        "OTEL_RESOURCE_ATTRIBUTES": (
            " team = pay%2Cments , q=a=b, , note=100%25%20sure,dup=1,dup=2,"
            "service.name=from-attrs,service.version=9.9,"
        ),
        "OTEL_SERVICE_NAME": "from-env",
    }
    config = load_config(env)
    sent = _runtime.resource_attributes(config)
    assert {"team": "pay,ments", "q": "a=b", "note": "100% sure", "dup": "2"} == {
        k: sent[k] for k in ("team", "q", "note", "dup")
    }
    assert ("from-env", "9.9") == (sent["service.name"], sent["service.version"])
    assert "env:OTEL_SERVICE_NAME" == config.source_of("service_name")


@pytest.mark.parametrize(
    ("variable", "option", "raw", "seconds"),
    [
        ("OTEL_BSP_SCHEDULE_DELAY", "bsp_schedule_delay", "250", 0.25),
        ("OTEL_BSP_EXPORT_TIMEOUT", "bsp_export_timeout", "1500", 1.5),
        ("OTEL_METRIC_EXPORT_INTERVAL", "metric_export_interval", "15000", 15.0),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "otlp_timeout", " 750 ", 0.75),
    ],
)
def test_otel_millisecond_variables_become_seconds(
    variable: str, option: str, raw: str, seconds: float
) -> None:
    """The spec's durations are milliseconds in the environment; obskit keeps seconds."""
    assert seconds == getattr(load_config({variable: raw}), option)


ODD_NUMERALS = ["nan", "inf", "-inf", "1e999", "-0", "0x10", "0,5", "5ms"]


@pytest.mark.parametrize("raw", ODD_NUMERALS)
@pytest.mark.parametrize("variable", ["OBSKIT_METRICS_PORT", "OBSKIT_BSP_MAX_QUEUE_BYTES"])
def test_odd_numerals_are_config_errors(variable: str, raw: str) -> None:
    """Non-finite, zero, hex, localized or suffixed numbers in obskit's own variables fail with
    a ConfigError naming the variable and value, never another exception and never a silently
    odd value."""
    with pytest.raises(ConfigError) as info:
        load_config({variable: raw})
    assert f"env:{variable}" == info.value.source
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("raw", ODD_NUMERALS)
@pytest.mark.parametrize("variable", ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE"])
def test_odd_numerals_in_otel_variables_are_ignored(variable: str, raw: str) -> None:
    """The same in an OTEL_* variable (shared with other OpenTelemetry software): warned about
    and ignored, as the specification says -- the default stands, never a silently odd value."""
    assert load_config({}) == load_config({variable: raw})


def test_case_and_whitespace_of_choices_are_normalized() -> None:
    """OTEL_* choice values are case-insensitive and stripped, lists tolerate blanks."""
    config = load_config(
        {
            "OTEL_TRACES_EXPORTER": " OTLP ",
            "OTEL_SDK_DISABLED": "TRUE",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "Gzip",
            "OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio",
            "OBSKIT_EXCLUDED_PATHS": " /a , /b ,, ",
            "OBSKIT_LOG_LEVEL": "debug",
        }
    )
    assert ("otlp", True, "gzip", "parentbased_traceidratio") == (
        config.traces_exporter,
        config.disabled,
        config.otlp_compression,
        config.sampler,
    )
    assert (("/a", "/b"), "DEBUG") == (config.excluded_paths, config.log_level)


# A bug this test found, since fixed: config.py _positive_int catches TypeError/ValueError but not
# the OverflowError int(float('inf')) raises, so configure() fails with a bare OverflowError
@pytest.mark.parametrize("option", ["bsp_max_queue_size", "metrics_port", "cardinality_limit"])
def test_infinite_integer_argument_is_a_config_error(option: str) -> None:
    """An integer option given float('inf') is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config({}, **{option: float("inf")})
    assert option == info.value.option


# A bug this test found, since fixed: config.py _number divides every str by the scale, so a
# duration passed to configure() as a string (settings files, Django settings) is read as
# milliseconds: otlp_timeout='5' becomes 5 ms, though arguments are documented in seconds
def test_string_duration_argument_is_seconds() -> None:
    """configure(otlp_timeout="5") means 5 seconds, like configure(otlp_timeout=5)."""
    config = load_config({}, otlp_timeout="5", bsp_schedule_delay="0.5")
    assert (5.0, 0.5) == (config.otlp_timeout, config.bsp_schedule_delay)


# A bug this test found, since fixed: config.py load_config copies service.name from
# OTEL_RESOURCE_ATTRIBUTES into service_name without the option's parser, so an empty value
# becomes service.name=''
def test_empty_service_name_in_resource_attributes_is_refused_or_ignored() -> None:
    """service.name= (empty) in OTEL_RESOURCE_ATTRIBUTES never yields an empty service name."""
    try:
        service = load_config({"OTEL_RESOURCE_ATTRIBUTES": "service.name=,team=x"}).service_name
    except ConfigError as exc:  # refusing it, naming the option, is right too
        service = "(refused)" if "service_name" == exc.option else ""
    assert service.strip()


# A bug this test found, since fixed: config.py _key_values accepts header values http.client
# cannot send (non-latin-1, CR/LF); configure() succeeds and then every span export raises
# ValueError in the export thread (obskit_internal_errors_total{component='span_export'}): no
# spans, no configure-time error
@pytest.mark.parametrize(
    "raw", ["authorization=Bearer%20t%E2%82%AC", "x-tenant=a%0D%0AX-Evil:%201"]
)
def test_unsendable_otlp_header_is_a_config_error(raw: str) -> None:
    """A header that can never be sent fails at configure time, naming otlp_headers."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": raw,
    }
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert "otlp_headers" == info.value.option


# A bug this test found, since fixed: config.py parses metrics_path with _str only; a path without
# a leading '/' can never equal PATH_INFO or the metrics server's request path, so /metrics is
# served nowhere, silently
def test_metrics_path_without_leading_slash_is_a_config_error() -> None:
    """OBSKIT_METRICS_PATH=metrics fails at configure time instead of disabling /metrics."""
    with pytest.raises(ConfigError) as info:
        load_config({"OBSKIT_METRICS_PATH": "metrics"})
    assert "metrics_path" == info.value.option


# =================================================================================================
# configure(), reconfigure, OTEL_SDK_DISABLED, OTLP metrics/logs endpoints
# =================================================================================================


_GLOBAL_RACE = """
import sys
import threading
import obskit
from opentelemetry import trace

sys.setswitchinterval(1e-6)  # only widens the window the race has anyway
barrier = threading.Barrier(8)

def first_use():
    barrier.wait()
    obskit.tracer_provider()

threads = [threading.Thread(target=first_use) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
obskit.configure(traces_file=sys.argv[1])  # spans exported: the sampler records
span = trace.get_tracer("app").start_span("work")
print(trace.get_tracer_provider() is obskit.tracer_provider(), span.is_recording())
"""


# A bug this test found, since fixed: _runtime.py _install_global (check-then-set of _global,
# outside _state.lock) races: concurrent first uses (tracer_provider(), @obskit.red, middleware
# construction) build two providers; the OTel global keeps the first, obskit configures the
# second, so every span of trace.get_tracer() is dropped (sampler stays ALWAYS_OFF)
def test_concurrent_first_use_installs_one_global_tracer_provider(tmp_path: Path) -> None:
    """Threads touching obskit's provider at once still leave one provider that records."""
    assert "True True" == _python(_GLOBAL_RACE, str(tmp_path / "t.jsonl")).strip()


def test_concurrent_configure_and_metrics_server_under_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """configure() from 8 threads at once with the same options builds one runtime (one server
    on metrics_port, no 'port in use'); the server answers 32 concurrent scrapes while an idle
    client holds a connection; reconfiguring on the same port keeps it served; shutdown frees it."""
    port = free_port()
    barrier = threading.Barrier(8)

    def configure() -> object:
        barrier.wait()
        return obskit.configure(traces_exporter="none", metrics_port=port)

    with caplog.at_level(logging.WARNING, logger="obskit"), ThreadPoolExecutor(8) as pool:
        configs = list(pool.map(lambda _: configure(), range(8)))
    assert 1 == len({id(c) for c in configs})
    assert not [r for r in caplog.records if "cannot serve metrics" in r.getMessage()]

    def scrape(_: int) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Accept": PROMETHEUS_3_ACCEPT})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    with socket.create_connection(("127.0.0.1", port), timeout=5):  # connected, never speaks
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(scrape, range(32)))
        assert [200] * 32 == [status for status, _ in results]
        for _, body in results[:3]:
            assert any(f.name == "obskit_runtime_threads" for f in openmetrics_families(body))
        obskit.configure(traces_exporter="none", metrics_port=port, service_name="other")
        assert 200 == scrape(0)[0]
        started = time.monotonic()
        assert obskit.shutdown(2)
        assert time.monotonic() - started < 2
    with socket.socket() as again:  # no listener left on the port (TIME_WAIT aside)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))  # conflicts with a 0.0.0.0 listener too
        again.listen(1)


def test_metrics_port_in_use_falls_back_to_the_app_path(caplog: pytest.LogCaptureFixture) -> None:
    """A metrics port another process holds is no configure error: one warning naming the port,
    and the app's own /metrics keeps serving."""
    from obskit.wsgi import ObskitMiddleware

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="obskit"):
            obskit.configure(traces_exporter="none", metrics_port=port)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 == len(warnings)
    assert f"port {port}" in warnings[0]
    app = ObskitMiddleware(lambda environ, start_response: [b"app"])
    seen: list[str] = []
    body = b"".join(
        app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda s, h: seen.append(s))
    )
    assert ["200 OK"] == seen
    assert b"obskit_runtime_threads" in body


def test_sdk_disabled_records_no_span_but_counts_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=TRUE: no span is recorded (API or request), RED metrics still count."""
    from obskit.wsgi import ObskitMiddleware

    monkeypatch.setenv("OTEL_SDK_DISABLED", "TRUE")
    assert obskit.configure().disabled
    assert not trace.get_tracer("app").start_span("x").is_recording()

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    list(ObskitMiddleware(inner)({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: 0))
    obskit.force_flush(2)
    labels = {"method": "GET", "route": "__unmatched__", "status": "200"}
    assert 1.0 == _state.registry.get_sample_value("http_requests_total", labels)
    assert not Path(os.environ["OBSKIT_TRACES_FILE"]).exists()


# A bug this test found, since fixed: _runtime.py _build returns right after 'if config.disabled'
# before starting the metrics_port server and the runtime collector, although
# docs/configuration.md says disabled means 'no spans at all (Prometheus metrics stay)': the
# scrape port refuses
def test_sdk_disabled_keeps_the_prometheus_metrics_port() -> None:
    """disabled=True with metrics_port: the port still serves the Prometheus metrics."""
    import urllib.request

    port = free_port()
    obskit.configure(disabled=True, metrics_port=port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        body = response.read()
    assert b"obskit_runtime_threads" in body


# A bug this test found, since fixed: _runtime.py _build only ever calls instrument_runtime(); a
# later configure(runtime_metrics=False) leaves the collector registered, so the 'really
# reconfigures' promise of _runtime's docstring fails for this option
def test_reconfigure_runtime_metrics_off_removes_them() -> None:
    """configure(runtime_metrics=False) after the default drops obskit_runtime_* from /metrics."""
    obskit.configure(traces_exporter="none")
    assert b"obskit_runtime_threads" in render(None)[0]
    obskit.configure(traces_exporter="none", runtime_metrics=False)
    assert b"obskit_runtime_threads" not in render(None)[0]


# A bug this test found, since fixed: _otlp_signals.py _endpoint/_exporter always pass endpoint=
# built from OTEL_EXPORTER_OTLP_ENDPOINT + /v1/<signal>, which overrides the SDK exporters' own
# reading of OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / _LOGS_ENDPOINT: per-signal endpoints are
# ignored
def test_per_signal_metrics_and_logs_endpoints_win_over_the_generic_one(
    monkeypatch: pytest.MonkeyPatch, collectors: tuple[_Collector, _Collector]
) -> None:
    """OTLP metrics and logs go to their per-signal endpoints, used as is."""
    generic, specific = collectors
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", generic.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", specific.url + "/custom/metrics")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", specific.url + "/custom/logs")
    obskit.configure(traces_exporter="none", metrics_exporter="otlp", logs_exporter="otlp")
    obskit.meter_provider().get_meter("adv").create_counter("adv_events").add(1)
    logging.getLogger("obskit.tests.adv_config").warning("to the logs endpoint")
    assert obskit.force_flush(5)
    assert ([], ["/custom/logs", "/custom/metrics"]) == (
        sorted(p for p, _ in generic.received),
        sorted(p for p, _ in specific.received),
    )


# =================================================================================================
# multi-process (gunicorn) metrics
# =================================================================================================


_DECLARED_BEFORE = """
import sys
import obskit
from obskit.metrics.exposition import render

orders = obskit.counter("adv_orders", "Orders.", ["kind"])  # module level, as apps do
orders.labels("early").inc()

@obskit.red
def work():
    pass

work()  # its writers are cached at the first call
obskit.configure(traces_exporter="none", runtime_metrics=False, multiproc_dir=sys.argv[1])
orders.labels("early").inc()
orders.labels("late").inc()
work()
body = render(None)[0].decode()
print(sorted(line for line in body.splitlines()
             if line.startswith(("adv_orders_total", "function_calls_total"))))
print([line for line in body.splitlines()
       if line.startswith("function_duration_seconds_count")])
"""


# A bug this test found, since fixed: _runtime.py _enable_multiprocess switches prometheus_client's
# ValueClass  only for metrics created afterwards; children made before configure(multiproc_dir=...)
# keep in-process values that the multi-process /metrics never reads: their counts vanish
def test_metric_declared_before_configure_multiproc_dir_is_exposed(tmp_path: Path) -> None:
    """A module-level counter used before configure(multiproc_dir=...) is counted at /metrics."""
    out = _python(_DECLARED_BEFORE, str(tmp_path / "prom"))
    assert 'adv_orders_total{kind="late"} 1.0' in out, out  # created after configure: counted
    assert 'adv_orders_total{kind="early"} 2.0' in out, out  # counted before and after
    assert 'result="ok"} 2.0' in out, out  # @obskit.red's cached writers follow the switch
    assert 'function_duration_seconds_count{function="work",module="__main__"} 2.0' in out, out


# A bug this test found, since fixed: _runtime.py _enable_multiprocess calls os.makedirs unguarded
# and config.py parses multiproc_dir with _opt_str only: a path that cannot be a directory raises
# a bare FileExistsError/NotADirectoryError naming neither option nor what is allowed
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_multiproc_dir_that_cannot_be_a_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """multiproc_dir naming a regular file (or a path under one) is a ConfigError."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored (removed) after the test
    plain = tmp_path / "plain"
    plain.write_text("x")
    directory = str(plain if where == "file" else plain / "prom")
    with pytest.raises(ConfigError) as info:
        obskit.configure(traces_exporter="none", multiproc_dir=directory)
    assert "multiproc_dir" == info.value.option


_MODES_WORKER = """
import sys
import obskit
from obskit.metrics._direct import Observer, adder, setter

obskit.configure(traces_exporter="none", runtime_metrics=False)
value = float(sys.argv[1])
for mode in ("livesum", "max", "min", "all", "mostrecent", "livemax"):
    setter(obskit.gauge("adv_g_" + mode, "G.", ["k"], multiprocess_mode=mode).labels("x"))(value)
adder(obskit.counter("adv_c", "C.", ["k"]).labels("x"))(value)
Observer(obskit.histogram("adv_h", "H.", ["k"], buckets=[1, 10]).labels("x"))(value)
print("ready", flush=True)
sys.stdin.read()  # alive (a live worker) until the test closes stdin
"""


def test_multiprocess_gauge_modes_and_direct_writers_across_live_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two live worker processes write through obskit's direct writers (the HTTP pipeline's
    path: setter, adder, Observer); one scrape combines them per gauge multiprocess_mode, sums
    the counter and merges the histogram."""
    directory = tmp_path / "prom"
    directory.mkdir()
    workers = []
    try:
        for value in ("3", "4"):  # one after the other: "mostrecent" is the second's
            worker = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(_MODES_WORKER), value],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            )
            workers.append(worker)
            assert worker.stdout is not None
            assert b"ready\n" == worker.stdout.readline()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        samples = {
            (s.name, s.labels.get("le"), s.labels.get("pid")): s.value
            for f in text_string_to_metric_families(render(None)[0].decode())
            for s in f.samples
            if s.name.startswith("adv_")
        }
    finally:
        for worker in workers:
            worker.communicate(b"", timeout=20)
    assert {
        ("adv_g_livesum", None, None): 7.0,
        ("adv_g_max", None, None): 4.0,
        ("adv_g_min", None, None): 3.0,
        ("adv_g_mostrecent", None, None): 4.0,
        ("adv_g_livemax", None, None): 4.0,
        ("adv_c_total", None, None): 7.0,
        ("adv_h_bucket", "1.0", None): 0.0,
        ("adv_h_bucket", "10.0", None): 2.0,
        ("adv_h_bucket", "+Inf", None): 2.0,
        ("adv_h_count", None, None): 2.0,
        ("adv_h_sum", None, None): 7.0,
    } == {k: v for k, v in samples.items() if k[0] != "adv_g_all"}
    assert {(pid, v) for (name, _, pid), v in samples.items() if name == "adv_g_all"} == {
        (str(workers[0].pid), 3.0),
        (str(workers[1].pid), 4.0),
    }


_GAUGE_APP = """
import os
import obskit
from obskit.wsgi import ObskitMiddleware

obskit.configure(traces_exporter="none", runtime_metrics=False)
obskit.gauge("adv_pool_capacity", "Connections this worker's pool holds.").set(10)


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


app = ObskitMiddleware(_app)
"""

# The documented gunicorn setup (docs/logging.md), plus the child_exit hook obskit should offer.
_GUNICORN_CONF = """
import obskit.gunicorn

logger_class = "obskit.gunicorn.Logger"
if hasattr(obskit.gunicorn, "child_exit"):
    child_exit = obskit.gunicorn.child_exit
"""


@pytest.mark.e2e
# A bug this test found, since fixed: nothing calls
# prometheus_client.multiprocess.mark_process_dead -- obskit/gunicorn.py has no child_exit hook
# and the docs name none -- so a dead worker's gauge_live*_<pid>.db files stay and its values are
# summed forever: obskit.gauge's default 'livesum' (and resource_in_use/capacity, 'summed over the
# live workers' per docs/use.md) grows with every worker restart (max_requests, OOM kill, timeout)
def test_dead_gunicorn_worker_gauges_leave_the_live_sum(tmp_path: Path) -> None:
    """2 gunicorn workers each set a livesum gauge to 10; one is killed and replaced; /metrics
    reports 20 (two live workers), not 30."""
    pytest.importorskip("gunicorn")
    import gunicorn.config

    (tmp_path / "adv_gauge_app.py").write_text(_GAUGE_APP)
    (tmp_path / "adv_gunicorn_conf.py").write_text(_GUNICORN_CONF)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", "adv_gunicorn_conf.py", "-w", "2"]
    argv += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "2"]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")
    argv.append("adv_gauge_app:app")

    def gauge_pids() -> set[int]:
        return {int(p.stem.rpartition("_")[2]) for p in multiproc.glob("gauge_*.db")}

    def wait_for(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 15
        while not condition():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what}: {(tmp_path / 'gunicorn.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def capacity() -> float | None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if "adv_pool_capacity" == sample.name:
                    return sample.value
        return None

    with (tmp_path / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=child_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: len(gauge_pids()) >= 2, "two workers never started")
        first = gauge_pids()
        assert 20.0 == capacity()
        os.kill(min(first), signal.SIGKILL)  # an OOM kill; gunicorn reaps and replaces it
        wait_for(lambda: gauge_pids() - first, "no replacement worker")
        assert 20.0 == capacity()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# =================================================================================================
# /metrics exposition
# =================================================================================================

HOSTILE = ['q"uote', "back\\slash", "new\nline", "tab\there", "end\\", "\\n literal", "é✓", ""]


def test_hostile_label_values_stay_parseable_and_exemplars_only_in_openmetrics() -> None:
    """Label values with quotes, backslashes, newlines, non-ASCII and undecodable surrogates
    round-trip through prometheus_client's text and OpenMetrics parsers and pass the real
    ``promtool check metrics``; a trace_id exemplar appears in OpenMetrics only. Prometheus 2's
    and 3's Accept headers get OpenMetrics."""
    obskit.configure(traces_exporter="none")
    counter = obskit.counter("adv_hostile", 'Help with "quotes", \\ and\na newline.', ["v"])
    for value in [*HOSTILE, "surrogate\udcff"]:
        counter.labels(value).inc()
    latency = obskit.histogram("adv_latency", "Latency.", ["route"], buckets=[0.1, 1.0])
    latency.labels('r"1').observe(0.5, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})

    text, text_type = render(None)
    assert text_type.startswith("text/plain; version=0.0.4")
    assert b'# {trace_id="' not in text  # no exemplar (a metric *named* ..._trace_id may be)
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    values = {s.labels["v"] for s in families["adv_hostile"].samples if s.name.endswith("_total")}
    assert set(HOSTILE) <= values
    assert len(HOSTILE) + 1 == len(values)
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package; the rest of the test runs without it
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        # 1: a parse error; 3: lint findings only (metrics of other tests may lack HELP)
        assert check.returncode in (0, 3), check.stdout + check.stderr
        assert b"parsing error" not in check.stdout + check.stderr

    for accept in (PROMETHEUS_2_ACCEPT, PROMETHEUS_3_ACCEPT):
        body, content_type = render(accept)
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        families = {f.name: f for f in openmetrics_families(body.decode())}
        hostile = families["adv_hostile"].samples
        assert set(HOSTILE) <= {s.labels["v"] for s in hostile}
        exemplars = [s.exemplar for s in families["adv_latency"].samples if s.exemplar]
        assert ["4bf92f3577b34da6a3ce929d0e0e4736"] == [e.labels["trace_id"] for e in exemplars]


# A bug this test found, since fixed: metrics/exposition.py render() hands Accept to
# prometheus_client's choose_encoder unguarded; 'version=abc' makes it raise TypeError (str >=
# int), which escapes obskit's middleware into the host app (a 500 and an error report for any
# client that sends that header)
@pytest.mark.parametrize(
    "accept",
    ["application/openmetrics-text; version=abc", "application/openmetrics-text;version=1.x"],
)
def test_malformed_accept_header_does_not_raise_into_the_app(accept: str) -> None:
    """A malformed Accept on /metrics gets an answer (text fallback), not an exception."""
    from obskit.wsgi import ObskitMiddleware

    obskit.configure(traces_exporter="none")
    app = ObskitMiddleware(lambda environ, start_response: [b"app"])
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "HTTP_ACCEPT": accept}
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses[0][:3] in ("200", "406")
    assert body


# A bug this test found, since fixed: metrics/exposition.py render() relies on prometheus_client's
# choose_encoder, which ignores q-values: OpenMetrics is served to a client that refused it (q=0)
# or prefers the text format
@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text;q=0,text/plain;version=0.0.4",
        "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.2",
    ],
)
def test_accept_q_values_are_honoured(accept: str) -> None:
    """The text format is served when the scraper ranks it above OpenMetrics."""
    obskit.configure(traces_exporter="none")
    assert render(accept)[1].startswith("text/plain")


# A bug this test found, since fixed: metrics/exposition.py MetricsServer's handler defines do_GET
# only, so HEAD /metrics on the metrics port answers 501 (RFC 9110 9.1: GET and HEAD must be
# supported; load balancer and uptime checks use HEAD)
def test_metrics_server_answers_head() -> None:
    """HEAD /metrics on metrics_port: 200, the scrape's Content-Type, no body."""
    port = free_port()
    obskit.configure(traces_exporter="none", metrics_port=port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert (200, b"") == (response.status, response.read())
        assert response.getheader("Content-Type", "").startswith("text/plain")
    finally:
        conn.close()


# =================================================================================================
# CLI
# =================================================================================================


def test_cli_unknown_subcommand_bad_option_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse errors exit 2 with usage on stderr, --help exits 0; never a traceback."""
    for argv, code in (([], 2), (["bogus"], 2), (["traces", "--last", "x"], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert code == info.value.code, argv
    out, err = capsys.readouterr()
    assert "invalid choice: 'bogus'" in err
    assert "usage: obskit" in out
    assert "Traceback" not in out + err


def test_cardinality_without_a_running_app_is_bounded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening: exit 1 at once; a server that accepts and never answers: exit 1 once
    --timeout passes."""
    assert 1 == main(["cardinality", f"http://127.0.0.1:{free_port()}/metrics"])
    assert "cannot read" in capsys.readouterr().out
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        started = time.monotonic()
        assert 1 == main(["cardinality", url, "--timeout", "0.3"])
        assert time.monotonic() - started < 2
    assert "timed out" in capsys.readouterr().out


# A bug this test found, since fixed: cli/cardinality.py iterates text_string_to_metric_families
# outside any try: a 200 page that is not Prometheus text (an HTML page, a wrong path behind an
# SPA fallback) ends `obskit cardinality` with a ValueError traceback
def test_cardinality_on_a_page_that_is_not_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    """A 200 HTML page: exit 1 with a message naming the URL, not a traceback."""
    status = _cardinality([b"<!doctype html><html><body>Shop</body></html>\n"], 2)
    assert 1 == status
    assert "is not a Prometheus metrics page" in capsys.readouterr().out


# A bug this test found, since fixed: cli/cardinality.py formats int(guarded[metric]) /
# int(limit): a NaN or +Inf sample (valid exposition syntax) raises ValueError/OverflowError with
# a traceback
@pytest.mark.parametrize("value", ["NaN", "+Inf"])
def test_cardinality_non_finite_samples(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """Non-finite series/limit samples are reported, not a crash."""
    page = (
        f'obskit_cardinality_series{{metric="m"}} {value}\n'
        f'obskit_cardinality_limit{{metric="m"}} {value}\n'
    ).encode()
    assert 0 == _cardinality([page], 2)
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("m ")]


def _trickle() -> Iterator[bytes]:
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        yield b"# still streaming\n"
        time.sleep(0.05)


# A bug this test found, since fixed: cli/cardinality.py bounds each socket operation by --timeout
# but not the whole read (urlopen + read()): a URL that keeps streaming (an SSE or log endpoint
# given by mistake, a stuck app) holds the command -- and its memory -- without limit
def test_cardinality_timeout_bounds_a_streaming_answer() -> None:
    """--timeout 0.3 against a server streaming for 1.5 s returns well before it ends."""
    started = time.monotonic()
    _cardinality(_trickle(), 0.3)
    assert time.monotonic() - started < 1.0


def test_cardinality_refuses_a_page_past_its_size_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page larger than the cap is not read whole: exit 1 with the reason."""
    from obskit.cli import cardinality

    monkeypatch.setattr(cardinality, "_MAX_PAGE", 1000)
    assert 1 == _cardinality([b"# padding\n" * 50] * 4, 5)
    assert "page larger than" in capsys.readouterr().out


# A bug this test found, since fixed: config.py keeps undecodable environment bytes as surrogates
# and cli/doctor.py _table / cli/traces.py _missing_message print them unescaped; on a stdout with
# errors='strict' (PYTHONIOENCODING=utf-8, an en_US.UTF-8 locale) the CLI dies with
# UnicodeEncodeError
@pytest.mark.parametrize("command", ["doctor", "traces"])
def test_cli_survives_undecodable_bytes_on_a_strict_utf8_stdout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    """OTEL_SERVICE_NAME=b'svc\\xff' (doctor) or a file name with byte 0xff (traces)."""
    raw, out = _strict_utf8_out()
    if command == "doctor":
        monkeypatch.setenv("OTEL_SERVICE_NAME", "svc\udcff")  # os.environb: b"svc\xff"
        status = doctor_cli.run(argparse.Namespace(timeout=0.5), out)
    else:
        status = traces_cli.run(_traces_args(str(tmp_path / "spans-\udcff.jsonl")), out)
    out.flush()
    assert status in (0, 1)
    assert raw.getvalue()


# A bug this test found, since fixed: cli/doctor.py prints str(ConfigError), whose message
# (config.py ConfigError.__init__) carries the raw value: a malformed OTEL_EXPORTER_OTLP_HEADERS
# leaks the token that doctor masks as *** in its table
def test_doctor_does_not_print_secrets_of_a_malformed_header_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad headers value names the option, without echoing the credential."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t,x-tenant")
    assert 2 == main(["doctor"])
    out = capsys.readouterr().out
    assert "otlp_headers" in out
    assert "s3cr3t" not in out


def test_traces_binary_and_directory_inputs_are_reported(tmp_path: Path) -> None:
    """Random binary bytes (NUL, invalid UTF-8, no JSON) are skipped and counted; a directory is
    'cannot read' with exit 1; neither is a traceback."""
    binary = tmp_path / "spans.bin"
    binary.write_bytes(
        bytes(range(256)) * 64 + b"\n\xff\xfe\x00{\n" + _span("ab" * 16, "ok").encode()
    )
    raw, out = _strict_utf8_out()
    assert 0 == traces_cli.run(_traces_args(str(binary)), out)
    out.flush()
    text = raw.getvalue().decode()
    assert "malformed lines skipped" in text
    assert " ok " in text
    raw, out = _strict_utf8_out()
    assert 1 == traces_cli.run(_traces_args(str(tmp_path)), out)
    out.flush()
    assert "cannot read" in raw.getvalue().decode()


# A bug this test found, since fixed: cli/traces.py _hex_id accepts any string as trace id and
# _header prints trace.trace_id without Style.clean: a span line with an escape sequence in
# traceId writes raw terminal control codes (and a non-ASCII id crashes an ASCII stdout)
def test_traces_trace_id_cannot_inject_terminal_escapes(tmp_path: Path) -> None:
    """traceId text from the file is escaped like span names are."""
    path = tmp_path / "spans.jsonl"
    path.write_text(_span("ab\x1b]0;pwned\x07\x1b[2J", "evil") + "\n")
    raw, out = _strict_utf8_out()
    traces_cli.run(_traces_args(str(path)), out)
    out.flush()
    assert b"\x1b" not in raw.getvalue()


# A bug this test found, since fixed: cli/traces.py _int accepts integers of any size; format_ms
# divides by 1e6 and a 400-digit endTimeUnixNano raises OverflowError with a traceback (OTLP times
# are fixed64: such a line is malformed)
def test_traces_out_of_range_timestamps_are_malformed_not_a_crash(tmp_path: Path) -> None:
    """A span with a timestamp beyond 2**64 is skipped; the other trace still renders."""
    path = tmp_path / "spans.jsonl"
    huge = "1" + "0" * 400
    path.write_text(_span("ab" * 16, "huge", end=huge) + "\n" + _span("cd" * 16, "fine") + "\n")
    raw, out = _strict_utf8_out()
    assert 0 == traces_cli.run(_traces_args(str(path)), out)
    out.flush()
    assert " fine " in raw.getvalue().decode()
