"""Findings of a read-through review of the metrics (2026-11-25), each pinned by a test.

The review read ``obskit/metrics/cardinality.py``, ``instruments.py`` and ``exposition.py``
against Prometheus' and OpenMetrics' rules and prometheus_client 0.26, with repro scripts.
Multi-process cases run in a child process (multi-process mode is process-global state), with a
timeout; every test declares its metrics in a copy of the declaration table, dropped after it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Gauge
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import obskit
from obskit import _state
from obskit.metrics.cardinality import DETACHED, OVERFLOW, Guard
from obskit.metrics.exposition import forget_process, render
from obskit.testing import get_sample_value, samples
from tests.child_process import child_env

TIMEOUT = 30.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

_METRIC_NAME_CHARS = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME_CHARS = r"[a-zA-Z_][a-zA-Z0-9_]*"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No multi-process directory from the machine; the metrics declared here go into a copy
    of the declaration table (instruments outlive reset())."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(_state, "instruments", dict(_state.instruments))


def _run_child(script: str, tmp_path: Path) -> list[str]:
    """Run ``script`` in a Python process of its own (bounded); its stdout lines."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        env=child_env(),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert 0 == done.returncode, done.stderr.decode()
    return done.stdout.decode().splitlines()


def _families(accept: str | None) -> dict[str, int]:
    """``{family name: how many families of that name}`` of a scrape, each format read by its
    own parser (which fails the test if it refuses the body)."""
    body, content_type = render(accept)
    text = body.decode()
    parsed = (
        parse_om(text) if content_type.startswith("application/openmetrics") else parse_text(text)
    )
    counts: dict[str, int] = {}
    for family in parsed:
        counts[family.name] = counts.get(family.name, 0) + 1
    return counts


# -- 3. names outside Prometheus' classic character set --------------------------------------------


# A bug this test found, since fixed: obskit/metrics/instruments.py _declare accepted any metric
# name prometheus_client 0.26 accepts (any UTF-8): 'orders.completed' was written escaped as
# orders_completed, next to a real orders_completed -- two HELP/TYPE blocks of one name, which
# promtool and the OpenMetrics parser refuse and Prometheus keeps one of
@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("orders.completed", "orders_completed"),
        ("my-app-hits", "my_app_hits"),
        ("caf\u00e9_hits", "caf__hits"),
        ("9lives", "_9lives"),
        ("a b", "a_b"),
        ("", "_"),
    ],
)
def test_a_metric_name_outside_the_classic_set_is_refused_at_declaration(
    name: str, instead: str
) -> None:
    """The error says why and what to write instead; nothing is declared."""
    with pytest.raises(ValueError, match="not a Prometheus metric name") as info:
        obskit.counter(name, "Odd.")
    assert f"Name it {instead!r} instead" in str(info.value)
    assert name not in _state.instruments
    with pytest.raises(ValueError, match="not a Prometheus metric name"):
        obskit.histogram(name, "Odd.", ["k"])


# A bug this test found, since fixed: obskit/metrics/instruments.py _declare let a dotted
# business metric escape onto @obskit.red's function_calls (and 'orders.completed' onto
# orders_completed): the scrape had two families of one name
def test_names_that_would_escape_onto_another_family_cannot_be_declared() -> None:
    """Every family of a scrape has its own name, in both formats; the colliding spellings are
    refused, the classic ones accepted -- without colons, which Prometheus' naming guide leaves
    to recording rules."""
    obskit.configure(traces_exporter="none")

    @obskit.red
    def work() -> int:
        return 1

    work()
    obskit.counter("review_orders_completed", "Orders.").inc(5)
    for colliding in ("review.orders.completed", "review-orders-completed", "function.calls"):
        with pytest.raises(ValueError, match="not a Prometheus metric name"):
            obskit.counter(colliding, "Collides.")
    with pytest.raises(ValueError, match="colons are for recording rules"):
        obskit.counter("review:orders_completed:rate", "A recording-rule style name.")
    for accept in (None, OPENMETRICS):
        counts = _families(accept)
        assert dict.fromkeys(counts, 1) == counts
        assert "function_calls" in counts or "function_calls_total" in counts


# A bug this test found, since fixed: obskit/metrics/cardinality.py check_label_names accepted
# label names outside [a-zA-Z_][a-zA-Z0-9_]* (escaped only when written) and the reserved
# '__' prefix
@pytest.mark.parametrize(
    ("label", "reason", "instead"),
    [
        ("http.method", "not a Prometheus label name", "http_method"),
        ("http-method", "not a Prometheus label name", "http_method"),
        ("9th", "not a Prometheus label name", "_9th"),
        ("a:b", "not a Prometheus label name", "a_b"),
        ("r\u00e9gion", "not a Prometheus label name", "r_gion"),
        ("", "not a Prometheus label name", "_"),
        ("__name__", "reserved", "name__"),
        ("__tenant", "reserved", "tenant"),
    ],
)
def test_a_label_name_outside_the_classic_set_is_refused_at_declaration(
    label: str, reason: str, instead: str
) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        obskit.counter("review_odd_label", "Odd label.", [label])
    assert f"Name it {instead!r} instead" in str(info.value)
    assert "review_odd_label" not in _state.instruments


# A bug this test found, since fixed: obskit/metrics/cardinality.py check_label_names compared
# the deny-list with name.lower() only: 'user.id', 'user-id', 'session.id', 'client.ip' and
# 'trace.id' were accepted, and the exposition wrote them as user_id="42"...
@pytest.mark.parametrize(
    "label", ["user.id", "user-id", "User.ID", "USER_ID", "session.id", "client.ip", "trace.id"]
)
def test_the_deny_list_refuses_every_spelling_of_an_unbounded_label(label: str) -> None:
    with pytest.raises(obskit.CardinalityError, match="unbounded by nature") as info:
        obskit.histogram("review_latency", "Latency.", [label])
    if "." in label or "-" in label:  # the vouching advice names a name that can be declared
        assert "allow_unbounded=['" + label.replace(".", "_").replace("-", "_") in str(info.value)
    assert "review_latency" not in _state.instruments


def test_a_vouched_for_label_keeps_its_spelling() -> None:
    """``allow_unbounded`` still names the label as declared (case included)."""
    accounts = obskit.counter(
        "review_accounts", "Accounts.", ["Account_ID"], allow_unbounded=["Account_ID"]
    )
    accounts.labels("ops").inc()
    assert 1.0 == get_sample_value("review_accounts_total", {"Account_ID": "ops"})


def test_obskit_own_metrics_have_classic_names() -> None:
    """The names obskit declares itself (HTTP, @obskit.red, USE, loop lag, self-metrics) pass
    the check: declaring them raises nothing, and every declared name is classic."""
    import re

    from obskit.http._pipeline import HttpTelemetry
    from obskit.metrics.runtime import LoopLagMonitor

    obskit.configure(traces_exporter="none")
    HttpTelemetry()
    obskit.red(lambda: None)()
    with obskit.use("review_pool", capacity=2):
        pass
    loop = asyncio.new_event_loop()
    try:
        LoopLagMonitor(loop, 1.0, "review")._instruments()
    finally:
        loop.close()
    declared = {"http_requests", "function_calls", "resource_in_use"}
    declared.add("asyncio_event_loop_lag_seconds")
    assert declared <= set(_state.instruments)
    for name, instrument in _state.instruments.items():
        assert re.fullmatch(_METRIC_NAME_CHARS, name), name
        for label in instrument.label_names:
            assert re.fullmatch(_LABEL_NAME_CHARS, label), label
            assert not label.startswith("__"), label
    counts = _families(None)
    assert dict.fromkeys(counts, 1) == counts
    assert any(name.startswith("obskit_") for name in counts)


# -- 4. (str, Enum) label values ------------------------------------------------------------------


class Status(str, enum.Enum):
    ok = "ok"
    failed = "failed"


class Shouting(str):
    """A str subclass with its own __str__: recorded as its string value all the same."""

    def __str__(self) -> str:
        return self.upper()


# A bug this test found, since fixed: obskit/metrics/cardinality.py _text wrote a str subclass
# with str(): a (str, Enum) member seen first was 'Status.ok', while the plain 'ok' seen first
# took the member too (the cache is looked up by equality) -- one call, two series by history
@pytest.mark.parametrize("first", ["member", "string"])
def test_a_str_enum_member_is_recorded_as_its_value_whatever_came_first(first: str) -> None:
    calls = obskit.counter(f"review_enum_{first}", "Calls.", ["status"])
    order: list[Any] = [Status.ok, "ok", Status.ok] if first == "member" else ["ok", Status.ok]
    for value in order:
        calls.labels(value).inc()
    assert [({"status": "ok"}, float(len(order)))] == samples(f"review_enum_{first}_total")


def test_str_subclass_values_and_allow_lists_agree() -> None:
    """A str subclass with its own __str__ is its string value; an allow-list of enum members
    allows their values (it allowed 'Status.ok', so every member was __other__)."""
    results = obskit.counter(
        "review_enum_allowed", "Results.", ["status"], rules={"status": list(Status)}
    )
    results.labels(Status.ok).inc()
    results.labels("failed").inc()
    results.labels(Status.failed).inc()
    results.labels(Shouting("ok")).inc()
    results.labels("Status.ok").inc()
    assert {"ok": 2.0, "failed": 2.0, "__other__": 1.0} == {
        labels["status"]: value for labels, value in samples("review_enum_allowed_total")
    }


# -- 5. re-declaration with another definition -----------------------------------------------------


# A bug this test found, since fixed: obskit/metrics/instruments.py _declare compared only the
# kind and the label names: a second declaration with other buckets, rules, limit or gauge mode
# silently got the first one (its observations in the first buckets, no allow-list, no limit)
@pytest.mark.parametrize(
    ("first", "second", "what"),
    [
        (
            lambda: obskit.histogram("review_pay", "Pay.", ["p"], buckets=[0.1, 1]),
            lambda: obskit.histogram("review_pay", "Pay.", ["p"], buckets=[5, 10, 30]),
            "buckets",
        ),
        (
            lambda: obskit.histogram("review_pay", "Pay.", ["p"], buckets=[0.1, 1]),
            lambda: obskit.histogram("review_pay", "Pay.", ["p"]),
            "buckets",
        ),
        (
            lambda: obskit.counter("review_orders", "Orders.", ["m"]),
            lambda: obskit.counter("review_orders", "Orders.", ["m"], rules={"m": ["card"]}),
            "rules",
        ),
        (
            lambda: obskit.counter("review_orders", "Orders.", ["m"], limit=5),
            lambda: obskit.counter("review_orders", "Orders.", ["m"], limit=2),
            "limit",
        ),
        (
            lambda: obskit.gauge("review_stock", "Stock.", ["wh"]),
            lambda: obskit.gauge("review_stock", "Stock.", ["wh"], multiprocess_mode="max"),
            "multiprocess_mode",
        ),
    ],
    ids=["buckets", "default-buckets", "rules", "limit", "gauge-mode"],
)
def test_redeclaring_with_another_definition_names_what_differs(
    first: Any, second: Any, what: str
) -> None:
    declared = first()
    with pytest.raises(ValueError, match=f"already declared with {what} "):
        second()
    assert declared is first()  # the identical declaration still returns the same object


def test_an_identical_redeclaration_returns_the_same_instrument() -> None:
    """Bounds as ints or floats, with or without +Inf, a rule as a list or a LabelRule, no limit
    (the default, whatever it is now): the same definition."""
    pay = obskit.histogram("review_same_pay", "Pay.", ["p"], buckets=[1, 10], limit=7)
    assert pay is obskit.histogram("review_same_pay", "Pay.", ["p"], buckets=(1.0, 10.0, math.inf))
    assert pay is obskit.histogram("review_same_pay", "Pay.", ["p"], buckets=[1, 10], limit=7)
    rule = obskit.LabelRule(allow=frozenset({"card", "sepa"}))
    orders = obskit.counter("review_same_orders", "O.", ["m"], rules={"m": ["sepa", "card"]})
    assert orders is obskit.counter("review_same_orders", "O.", ["m"], rules={"m": rule})
    plain = obskit.counter("review_same_plain", "P.", ["m"])
    assert plain is obskit.counter(
        "review_same_plain", "P.", ["m"], rules={"m": obskit.LabelRule()}
    )
    obskit.configure(traces_exporter="none", cardinality_limit=3)
    assert plain is obskit.counter("review_same_plain", "P.", ["m"])
    stock = obskit.gauge("review_same_stock", "S.", multiprocess_mode="max")
    assert stock is obskit.gauge("review_same_stock", "S.", multiprocess_mode="max")


def test_a_redeclaration_with_another_help_text_keeps_the_first_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The help text changes no sample: the first is kept (the exposition has one), with one
    warning naming both."""
    first = obskit.counter("review_help", "Orders completed.")
    with caplog.at_level(logging.WARNING, logger="obskit"):
        assert first is obskit.counter("review_help", "Orders.")
        assert first is obskit.counter("review_help", "Orders.")
    warnings = [r.getMessage() for r in caplog.records if "review_help" in r.getMessage()]
    assert 1 == len(warnings), warnings
    assert "'Orders.'" in warnings[0]
    assert "'Orders completed.'" in warnings[0]
    first.inc()
    assert "# HELP review_help_total Orders completed." in render(None)[0].decode()


# -- 6. livemostrecent gauges of ended workers -----------------------------------------------------

_LIVE = sorted(mode for mode in Gauge._MULTIPROC_MODES if mode.startswith("live"))


# A bug this test found, since fixed: obskit/metrics/exposition.py forget_process removed the
# files of livemin/livemax/livesum/liveall only: an ended worker's livemostrecent gauge stayed in
# every scrape for ever
def test_forget_process_removes_every_live_gauge_mode(tmp_path: Path) -> None:
    assert "livemostrecent" in _LIVE
    pid = 4_000_000  # no such process
    for mode in sorted(Gauge._MULTIPROC_MODES):
        (tmp_path / f"gauge_{mode}_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    forget_process(pid, str(tmp_path))
    left = sorted(path.name for path in tmp_path.iterdir())
    expected = [f"gauge_{mode}_{pid}.db" for mode in Gauge._MULTIPROC_MODES if mode not in _LIVE]
    assert sorted([f"counter_{pid}.db", *expected]) == left


_ENDED_WORKER = """
import os, sys
directory = sys.argv[1]
os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
import obskit
from obskit.metrics.exposition import forget_process, render
obskit.configure(service_name="t", traces_exporter="none", multiproc_dir=directory)
recent = obskit.gauge("review_depth_mr", "Depth.", multiprocess_mode="livemostrecent")
summed = obskit.gauge("review_depth_ls", "Depth.", multiprocess_mode="livesum")
for hook in ("child_exit", "scrape"):
    pid = os.fork()
    if pid == 0:
        recent.set(42)
        summed.set(42)
        os._exit(0)
    os.waitpid(pid, 0)
    if hook == "child_exit":
        forget_process(pid)  # what obskit.gunicorn's child_exit does
    body = render(None)[0].decode()  # else: the scrape forgets the ended worker itself
    print(hook, [line for line in body.splitlines() if line.startswith("review_depth")])
    print(hook, sorted(name for name in os.listdir(directory) if str(pid) in name))
"""


# A bug this test found, since fixed: (the same) the dead worker's livemostrecent value 42 was
# still in /metrics after gunicorn's child_exit and after a scrape's own clean-up
def test_an_ended_workers_livemostrecent_gauge_leaves_the_scrape(tmp_path: Path) -> None:
    lines = _run_child(_ENDED_WORKER, tmp_path)
    for hook in ("child_exit", "scrape"):
        assert f"{hook} ['review_depth_ls 0.0']" in lines, lines
        assert f"{hook} []" in lines, lines


# -- 7. lone surrogates ---------------------------------------------------------------------------


# A bug this test found, since fixed: obskit/metrics/cardinality.py _text replaced a lone
# surrogate with '?' (encode 'replace'), not U+FFFD as the CHANGELOG says: a file name from
# os.fsdecode merged with a real 'report-?.csv'
def test_a_lone_surrogate_becomes_u_fffd_and_stays_apart_from_a_real_question_mark() -> None:
    files = obskit.counter("review_files", "Files.", ["name"])
    files.labels(os.fsdecode(b"report-\xff.csv")).inc()
    files.labels("report-?.csv").inc(2)
    files.labels(os.fsdecode(b"report-\xff.csv")).inc()
    assert {"report-\ufffd.csv": 2.0, "report-?.csv": 2.0} == {
        labels["name"]: value for labels, value in samples("review_files_total")
    }
    for accept in (None, OPENMETRICS):
        _families(accept)  # both parsers read the scrape


# -- 8. the first fold past the limit when its series cannot be made ------------------------------


# A bug this test found, since fixed: obskit/metrics/cardinality.py Guard._fold called
# make_child without the guard the new-series path has: the overflow series failing to be made
# (the multi-process directory removed under a worker) raised into the app's labels() call
def test_the_overflow_series_failing_to_be_made_does_not_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_state, "raise_internal_errors", False)
    made: list[tuple[str, ...]] = []
    broken = [True]

    def make_child(values: tuple[str, ...]) -> Any:
        if values == (OVERFLOW,) and broken[0]:
            raise FileNotFoundError("the multi-process directory is gone")
        made.append(values)
        return object()

    guard: Guard[Any] = Guard("review_guard", ("k",), make_child, limit=1)
    guard.labels("a")
    assert DETACHED is guard.labels("b")  # past the limit: a do-nothing child, no exception
    assert DETACHED is guard.peek("c")
    assert guard._overflow is None  # not kept: the next fold tries again
    assert 2.0 == get_sample_value("obskit_internal_errors_total", {"component": "metric_child"})
    broken[0] = False
    overflow = guard.labels("d")
    assert overflow is guard._overflow
    assert overflow is not DETACHED
    assert [("a",), (OVERFLOW,)] == made


_REMOVED_DIRECTORY = """
import os, shutil, sys
directory = sys.argv[1]
import obskit
obskit.configure(service_name="t", traces_exporter="none", multiproc_dir=directory)
hits = obskit.counter("review_hits_mp", "Hits.", ["page"], limit=2)
hits.labels("a").inc()
hits.labels("b").inc()
pid = os.fork()
if pid == 0:
    shutil.rmtree(directory)
    try:
        hits.labels("c").inc()  # the first fold
        hits.labels("d").inc()
        print("no exception", flush=True)
    except BaseException as exc:
        print("raised", type(exc).__name__, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


# A bug this test found, since fixed: (the same, as the review met it) a forked worker whose
# multi-process directory was removed got FileNotFoundError from its first fold
def test_the_first_fold_in_a_worker_whose_directory_was_removed_does_not_raise(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    assert ["no exception"] == _run_child(_REMOVED_DIRECTORY, directory)


# -- 9. a real "__overflow__" label value, then remove() -------------------------------------------


# A bug this test found, since fixed: obskit/metrics/cardinality.py Guard.remove dropped the child
# of a real label value "__overflow__", which later folds were given as the overflow series, and
# kept it as _overflow: every later fold went to a child the metric no longer had, lost
def test_removing_a_real_overflow_value_does_not_lose_later_folds() -> None:
    tenants = obskit.counter("review_tenants", "Tenants.", ["tenant"], limit=2)
    tenants.labels(OVERFLOW).inc()  # a tenant literally named so (user-controlled text)
    tenants.labels("a").inc()
    tenants.labels("b").inc()  # folds: into that same series
    assert tenants.remove(OVERFLOW)
    for tenant in ("c", "d", "e"):
        tenants.labels(tenant).inc()
    assert {"a": 1.0, "c": 1.0, OVERFLOW: 2.0} == {
        labels["tenant"]: value for labels, value in samples("review_tenants_total")
    }
    assert 3.0 == get_sample_value(
        "obskit_cardinality_overflow_total", {"metric": "review_tenants"}
    )
    assert tenants.folded(tenants.labels("f"))


def test_an_adapter_after_a_reconfiguration_with_other_http_buckets_starts() -> None:
    """Re-declaring with other buckets is refused -- but the HTTP adapters declare
    http_request_duration_seconds themselves: a second adapter made after a reconfiguration
    with other ``http_buckets`` keeps the first bounds and warns, rather than failing the app's
    start-up."""
    from obskit.wsgi import ObskitMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    obskit.configure(service_name="t", traces_exporter="none")
    first = ObskitMiddleware(app)
    obskit.configure(service_name="t", traces_exporter="none", http_buckets=[0.5, 5.0])
    second = ObskitMiddleware(app)
    assert first.telemetry.duration is second.telemetry.duration
