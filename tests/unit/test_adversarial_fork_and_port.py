"""Adversarial review of the metrics port's retry, the fork hooks, the locks renewed in a forked
child and the OTLP log attribute conversion: real sockets on 127.0.0.1, real threads, real forks
(every child reports through a pipe and leaves with ``os._exit``)."""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import Counter

import obskit
from obskit import _otlp_signals, _state
from obskit.metrics import exposition

RETRY_INTERVAL = 0.05


@pytest.fixture(autouse=True)
def _fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposition, "BIND_RETRY_INTERVAL", RETRY_INTERVAL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def blocker() -> Iterator[socket.socket]:
    """A listening socket holding a port, as another process would."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def _answer(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return int(resp.status)
    except (OSError, urllib.error.URLError):
        return None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def _until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _alive(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def _read(fd: int, timeout: float = 10.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 4096) if ready else b"<timeout>"


def _reap(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9


def _in_child(work: Callable[[], str], timeout: float = 2.0) -> str:
    """Fork; in the child run ``work`` in a thread bounded by ``timeout`` (a lock inherited held
    hangs it) and report its result, or "hung"; the child always leaves with os._exit."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            result: list[str] = ["hung"]

            def run() -> None:
                try:
                    result[0] = work()
                except BaseException as exc:  # reported, not raised in the child
                    result[0] = f"error: {exc!r}"

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(timeout)
            os.write(write_end, result[0].encode()[:4000] or b"<empty>")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        return _read(read_end, timeout + 8).decode()
    finally:
        os.close(read_end)
        _reap(pid)


def _holding(lock: Any) -> Callable[[], None]:
    """Hold ``lock`` from another thread until the returned function is called."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(20)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)

    def done() -> None:
        release.set()
        thread.join(5)

    return done


# --- locks renewed in a forked child -------------------------------------------------------------


def test_a_child_forked_while_labels_runs_in_another_thread_can_add_label_sets() -> None:
    """A thread of the parent is inside ``labels()`` (it holds the metric's lock) at the fork:
    the child still adds label sets to that metric."""
    obskit.configure(traces_exporter="none")
    counter = Counter("fork_labels", "Labels at a fork.", ["k"], registry=_state.registry)
    release = _holding(counter._lock)
    try:

        def work() -> str:
            counter.labels("child").inc()
            return "ok"

        assert "ok" == _in_child(work)
    finally:
        release()


# A bug this test found, since fixed: _state._renew_locks_after_fork renews the registries' and
# metrics' _lock only, not their values' (MutexValue._lock, held by a scrape reading the value): the
# child's inc() on that value waits for ever
def test_a_child_forked_while_a_scrape_reads_a_value_can_still_count() -> None:
    """The parent serves the metrics port; a scrape reading a counter's value holds its lock at
    the fork. The child (a preloaded gunicorn worker) must still count on it."""
    obskit.configure(traces_exporter="none")
    counter = Counter("fork_value", "Value at a fork.", registry=_state.registry)
    release = _holding(counter._value._lock)
    try:

        def work() -> str:
            counter.inc()
            return "ok"

        assert "ok" == _in_child(work)
    finally:
        release()


# A bug this test found, since fixed: _state._renew_locks_after_fork does not renew
# obskit.metrics._direct.Cells.lock (an HTTP route's series, held by a scrape or a request at the
# fork): the child's next request on that route waits for ever
def test_a_child_forked_while_a_route_series_is_locked_can_still_serve_the_route() -> None:
    from obskit.metrics._direct import Cell
    from obskit.wsgi import ObskitMiddleware

    obskit.configure(traces_exporter="none")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = ObskitMiddleware(app)

    def request() -> None:
        list(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None))

    request()
    cells = None
    for collector in list(_state.registry._collector_to_names):
        for child in list(getattr(collector, "_metrics", {}).values()):
            for value in (getattr(child, "_sum", None), getattr(child, "_value", None)):
                if type(value) is Cell:
                    cells = value._cells
    assert cells is not None
    release = _holding(cells.lock)
    try:

        def work() -> str:
            request()
            return "ok"

        assert "ok" == _in_child(work)
    finally:
        release()


# --- the metrics port's retry across forks and reconfigurations ----------------------------------


def test_a_child_forked_while_the_port_is_busy_takes_it_over_when_the_parent_stops_trying(
    blocker: socket.socket,
) -> None:
    """The parent retries a busy port and forks; the parent then shuts down and the port frees:
    the child's own retry takes the port and serves it; the port is free once the child ends."""
    port = blocker.getsockname()[1]
    obskit.configure(traces_exporter="none", metrics_port=port)
    assert _state.runtime is not None
    assert _state.runtime.metrics_retry is not None
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            blocker.close()  # the child's copy: the port is busy only while the parent holds it
            runtime = _state.runtime
            retry = runtime.metrics_retry if runtime is not None else None
            bound = retry is not None and _until(lambda: retry.server is not None, 8)
            os.write(from_child_w, b"bound" if bound else b"not bound")
            _read(to_child_r, 10)
            obskit.shutdown()
        finally:
            os._exit(0)
    try:
        obskit.shutdown()
        blocker.close()
        assert b"bound" == _read(from_child_r, 10)
        assert 200 == _answer(port)  # served by the child: the parent has shut down
    finally:
        os.write(to_child_w, b"x")
        assert 0 == _reap(pid)
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
    assert _until(lambda: _bindable(port))


def test_a_child_that_shuts_down_leaves_the_parents_server_and_does_not_hold_the_port(
    blocker: socket.socket,
) -> None:
    """The retry bound the port in the parent, then the parent forks: the child's shutdown leaves
    the parent serving, and the parent's shutdown frees the port while the child still runs."""
    port = blocker.getsockname()[1]
    obskit.configure(traces_exporter="none", metrics_port=port)
    assert _state.runtime is not None
    retry = _state.runtime.metrics_retry
    assert retry is not None
    blocker.close()
    assert _until(lambda: retry.server is not None and _answer(port) == 200)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            obskit.shutdown()
            time.sleep(3 * RETRY_INTERVAL)  # a child retry would have bound by now
            alive = _alive("obskit-metrics-port")
            os.write(from_child_w, b"down" if not alive else b"child retries")
            _read(to_child_r, 10)
        finally:
            os._exit(0)
    try:
        assert b"down" == _read(from_child_r, 10)
        assert 200 == _answer(port)
        obskit.shutdown()
        assert _until(lambda: _bindable(port))  # the child still runs
    finally:
        os.write(to_child_w, b"x")
        assert 0 == _reap(pid)
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)


def test_reconfiguring_on_the_same_busy_port_leaves_one_retry_and_one_server(
    blocker: socket.socket,
) -> None:
    port = blocker.getsockname()[1]
    before = len(_alive("obskit-metrics-port"))
    obskit.configure(traces_exporter="none", service_name="one", metrics_port=port)
    assert _state.runtime is not None
    first = _state.runtime.metrics_retry
    obskit.configure(traces_exporter="none", service_name="two", metrics_port=port)
    assert _state.runtime is not None
    second = _state.runtime.metrics_retry
    assert first is not None
    assert second is not None
    assert first is not second
    assert _until(lambda: len(_alive("obskit-metrics-port")) == before + 1)
    blocker.close()
    assert _until(lambda: second.server is not None and _answer(port) == 200)
    assert first.server is None
    assert _until(lambda: len(_alive("obskit-metrics-port")) == before)
    obskit.shutdown()
    assert _answer(port) is None
    assert _until(lambda: _bindable(port))


def test_shutdown_racing_the_retry_binding_never_leaves_the_port_bound() -> None:
    """The port frees just as obskit shuts down, again and again: whichever wins, no retry
    thread and no server survive and the port is free."""
    for attempt in range(15):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        obskit.configure(traces_exporter="none", metrics_port=port)
        assert _state.runtime is not None
        retry = _state.runtime.metrics_retry
        assert retry is not None
        holder.close()
        time.sleep(RETRY_INTERVAL * (attempt % 5) / 4)
        obskit.shutdown()
        assert _until(lambda port=port: _bindable(port), 3), attempt  # type: ignore[misc]
        assert retry.server is None
    assert _until(lambda: not _alive("obskit-metrics-port"), 3)


# --- the warning at a fork -------------------------------------------------------------------


def _forks_warned(caplog: pytest.LogCaptureFixture) -> int:
    return len([r for r in caplog.records if "has forked a child" in r.getMessage()])


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _reap(pid)


def test_the_fork_warning_waits_until_the_retry_serves_the_port(
    blocker: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    """A process still retrying a busy port serves nothing: no warning at its forks. Once its
    retry took the port over, a fork warns (once)."""
    port = blocker.getsockname()[1]
    _state.warned.discard("metrics_port_fork")
    obskit.configure(traces_exporter="none", metrics_port=port)
    assert _state.runtime is not None
    retry = _state.runtime.metrics_retry
    assert retry is not None
    with caplog.at_level(logging.WARNING, logger="obskit"):
        _fork_and_reap()
    assert 0 == _forks_warned(caplog)
    blocker.close()
    assert _until(lambda: retry.server is not None)
    with caplog.at_level(logging.WARNING, logger="obskit"):
        _fork_and_reap()
        _fork_and_reap()
    assert 1 == _forks_warned(caplog)


def test_a_child_of_the_serving_process_does_not_warn_when_it_forks_again() -> None:
    """The child does not serve its parent's port: its own forks (a grandchild) say nothing;
    the multi-process directory silences the parent too."""
    port = _free_port()
    obskit.configure(traces_exporter="none", metrics_port=port)

    def work() -> str:
        _state.warned.discard("metrics_port_fork")
        messages: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(record.getMessage())

        logger = logging.getLogger("obskit")
        logger.addHandler(Keep())
        logger.setLevel(logging.WARNING)
        _fork_and_reap()
        return str(sum("has forked a child" in m for m in messages))

    assert "0" == _in_child(work, 5)


# --- OTLP log attributes ---------------------------------------------------------------------


def _attributes(**extra: Any) -> dict[str, Any]:
    record = logging.getLogger("app").makeRecord(
        "app", logging.INFO, "f", 1, "m", (), None, extra=extra
    )
    handler_class = _otlp_signals._log_handler_class()
    handler = handler_class.__new__(handler_class)  # its class-level redactor: the defaults
    return dict(handler._get_attributes(record))


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_attribute_values_otlp_cannot_carry_are_written_as_text() -> None:
    attributes = _attributes(
        nested=[[1, 2]],
        mixed=[1, "a"],
        bool_and_int=[True, 1],
        huge=2**64,
        huge_in_list=[1, 2**70],
        top=2**63 - 1,
        bottom=-(2**63),
        below=-(2**63) - 1,
        flag=True,
        flags=[True, False],
        empty=[],
        thing=_Unprintable(),
        obskit_trace_id="ab" * 16,
        obskit_request="r",
    )
    assert "[[1, 2]]" == attributes["nested"]
    assert "[1, 'a']" == attributes["mixed"]
    assert "[True, 1]" == attributes["bool_and_int"]
    assert str(2**64) == attributes["huge"]
    assert "[1, " + str(2**70) + "]" == attributes["huge_in_list"]
    assert 2**63 - 1 == attributes["top"]
    assert -(2**63) == attributes["bottom"]
    assert str(-(2**63) - 1) == attributes["below"]
    assert attributes["flag"] is True
    assert [True, False] == attributes["flags"]
    assert [] == attributes["empty"]
    assert "<unprintable _Unprintable>" == attributes["thing"]
    assert not [k for k in attributes if k.startswith("obskit_")]


# A bug this test found, since fixed:
# _otlp_signals._log_handler_class()._LoggingHandler._get_attributes calls key.startswith() on every
# extra= key; the stdlib takes extra={1: ...}, and the AttributeError escapes the app's log call
def test_a_non_text_extra_key_does_not_break_the_apps_log_call() -> None:
    from tests.otlp_receiver import OtlpHttpReceiver

    # A collector that answers: a dead port's exporter would retry, and warn, into later tests.
    with OtlpHttpReceiver() as rx:
        obskit.configure(traces_exporter="none", otlp_endpoint=rx.endpoint, logs_exporter="otlp")
        logging.getLogger("app").warning("with an odd key", extra={1: "one"})  # type: ignore[dict-item]
        obskit.shutdown()


def test_the_export_filter_keeps_the_apps_records_from_other_threads_during_an_export() -> None:
    """Records are dropped only in the context that exports; the app's threads logging at the
    same time keep theirs."""
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

    record = logging.LogRecord("app", logging.INFO, "f", 1, "m", (), None)
    exporting, logged = threading.Event(), threading.Event()
    seen: list[bool] = []

    def export() -> None:
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            seen.append(bool(_otlp_signals._NOT_DURING_EXPORT.filter(record)))
            exporting.set()
            logged.wait(5)
        finally:
            detach(token)

    thread = threading.Thread(target=export)
    thread.start()
    assert exporting.wait(5)
    seen.append(bool(_otlp_signals._NOT_DURING_EXPORT.filter(record)))
    logged.set()
    thread.join(5)
    assert [False, True] == seen


def test_the_http_duration_follows_the_runtime_and_is_quiet_after_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from obskit.http._pipeline import HttpTelemetry

    obskit.configure(
        traces_exporter="none",
        otlp_endpoint="http://127.0.0.1:9",
        metrics_exporter="prometheus+otlp",
    )
    first = _state.runtime
    assert first is not None
    assert first.meter_provider is not None
    telemetry = HttpTelemetry()

    def otlp_duration(runtime: Any) -> Any:
        """The histogram ``Request.finish`` records to while ``runtime`` is current."""
        if runtime is not telemetry._runtime:
            telemetry.follow(runtime)
        return telemetry._otlp_duration

    histogram = otlp_duration(first)
    assert histogram is not None
    assert histogram is otlp_duration(first)
    obskit.configure(
        traces_exporter="none",
        service_name="again",
        otlp_endpoint="http://127.0.0.1:9",
        metrics_exporter="prometheus+otlp",
    )
    assert _state.runtime is not first
    again = otlp_duration(_state.runtime)
    assert again is not None
    assert again is not histogram
    obskit.shutdown()
    # The shut-down runtime stays current: recording to its closed provider is quiet.
    with caplog.at_level(logging.WARNING):
        again.record(0.1, {"http.request.method": "GET"})
        otlp_duration(_state.runtime)
    # This thread's records only: a late export of the shut-down providers (their threads) may
    # warn about port 9 meanwhile on a loaded host.
    here = threading.get_ident()
    assert [] == [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.thread == here
    ]
