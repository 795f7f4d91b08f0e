"""Cardinality guard: per-metric series cap with an overflow series, label rules, deny-list."""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import tracemalloc
from pathlib import Path

import pytest

import obskit
from obskit import _state
from obskit.metrics.cardinality import OTHER, OVERFLOW, CardinalityError, LabelRule
from obskit.metrics.exposition import render
from obskit.testing import get_sample_value


def test_past_the_limit_new_label_sets_fold_into_one_overflow_series(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Totals stay right, series stay at limit + 1, overflow is counted and warned about once."""
    orders = obskit.counter("orders", "Orders.", ["method", "region"], limit=5)
    with caplog.at_level(logging.WARNING, logger="obskit"):
        for i in range(50):
            orders.labels(f"m{i}", "eu").inc()
    assert 5 == orders.series_count()
    assert 45.0 == get_sample_value("orders_total", {"method": OVERFLOW, "region": OVERFLOW})
    assert 45.0 == get_sample_value("obskit_cardinality_overflow_total", {"metric": "orders"})
    assert 1 == sum("reached its limit" in r.getMessage() for r in caplog.records)
    body = render(None)[0].decode()
    assert 6 == sum(line.startswith("orders_total{") for line in body.splitlines())


def test_known_label_sets_keep_recording_after_overflow() -> None:
    """A label set admitted before the limit was reached is never folded."""
    hits = obskit.counter("hits", "Hits.", ["route"], limit=2)
    hits.labels("/a").inc()
    hits.labels("/b").inc()
    hits.labels("/c").inc()
    hits.labels("/a").inc()
    assert 2.0 == get_sample_value("hits_total", {"route": "/a"})
    assert 1.0 == get_sample_value("hits_total", {"route": OVERFLOW})


def test_series_count_and_limit_are_self_metrics() -> None:
    """obskit_cardinality_series and _limit report each metric's series against its limit."""
    jobs = obskit.gauge("jobs", "Jobs.", ["queue"], limit=10)
    for q in ("a", "b", "c"):
        jobs.labels(q).set(1)
    assert 3.0 == get_sample_value("obskit_cardinality_series", {"metric": "jobs"})
    assert 10.0 == get_sample_value("obskit_cardinality_limit", {"metric": "jobs"})


def test_removed_label_sets_leave_the_scrape_and_free_their_place() -> None:
    """remove() drops a series (as prometheus_client's does) and frees its place under the
    limit; the cached aliases go too, so a later write creates a fresh, exposed series."""
    pools = obskit.gauge("pool_in_use", "In use.", ["pool"], limit=2)
    pools.labels("a").set(3)
    pools.labels("b").set(4)
    pools.labels("c").set(5)  # folded: the limit is reached
    assert pools.remove("a")
    assert not pools.remove("a")
    assert not pools.remove("never")
    assert None is get_sample_value("pool_in_use", {"pool": "a"})
    assert 1 == pools.series_count()
    assert 1.0 == get_sample_value("obskit_cardinality_series", {"metric": "pool_in_use"})
    pools.labels("c").set(6)  # "a"'s place is free now
    assert 6.0 == get_sample_value("pool_in_use", {"pool": "c"})
    pools.labels("a").set(7)  # no place left: folded, not written to a detached child
    assert 7.0 == get_sample_value("pool_in_use", {"pool": OVERFLOW})
    assert 4.0 == get_sample_value("pool_in_use", {"pool": "b"})
    with pytest.raises(ValueError, match="no labels"):
        obskit.gauge("pool_total_in_use", "In use.").remove()


def test_default_limit_comes_from_configuration() -> None:
    """cardinality_limit sets the default cap of metrics declared afterwards."""
    obskit.configure(traces_exporter="none", cardinality_limit=3)
    m = obskit.counter("capped", "Capped.", ["k"])
    for i in range(10):
        m.labels(i).inc()
    assert 3 == m.series_count()


def test_allow_list_of_values_and_pattern() -> None:
    """Values outside an allow-list or pattern are recorded as __other__."""
    payments = obskit.counter(
        "payments",
        "Payments.",
        ["method", "code"],
        rules={"method": ["card", "paypal"], "code": re.compile(r"[0-9]{3}")},
    )
    payments.labels("card", "200").inc()
    payments.labels("bitcoin", "2000").inc()
    payments.labels("paypal", "abc").inc()
    assert 1.0 == get_sample_value("payments_total", {"method": "card", "code": "200"})
    assert 1.0 == get_sample_value("payments_total", {"method": OTHER, "code": OTHER})
    assert 1.0 == get_sample_value("payments_total", {"method": "paypal", "code": OTHER})


def test_long_values_are_truncated() -> None:
    """A label value longer than max_length is cut, so one value cannot be megabytes."""
    m = obskit.counter("tags", "Tags.", ["tag"], rules={"tag": LabelRule(max_length=8)})
    m.labels("x" * 100_000).inc()
    assert 1.0 == get_sample_value("tags_total", {"tag": "x" * 8})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (42, "42"),
        (b"bytes\xff", "bytes\ufffd"),
        (object, "<class 'object'>"),
    ],
)
def test_odd_label_values_never_raise(value: object, expected: str) -> None:
    """None, bools, bytes, arbitrary objects become strings; nothing raises."""
    m = obskit.counter("odd", "Odd.", ["v"])
    m.labels(value).inc()
    assert 1.0 == get_sample_value("odd_total", {"v": expected})


def test_unprintable_and_unhashable_values_never_raise() -> None:
    """An object whose __str__ raises, and an unhashable dict, still record."""

    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    m = obskit.counter("odd2", "Odd.", ["v"])
    m.labels(Bad()).inc()
    m.labels({"a": 1}).inc()
    assert 1.0 == get_sample_value("odd2_total", {"v": "<unprintable Bad>"})
    assert 1.0 == get_sample_value("odd2_total", {"v": "{'a': 1}"})


@pytest.mark.parametrize(
    "label", ["user_id", "request_id", "session_id", "email", "ip", "trace_id"]
)
def test_unbounded_label_names_are_refused_at_declaration(label: str) -> None:
    """Declaring a label that is unbounded by nature fails with why and what to do."""
    with pytest.raises(CardinalityError, match="unbounded by nature") as info:
        obskit.counter(f"bad_{label}", "Bad.", [label])
    assert "span attribute or a log field" in str(info.value)


def test_unbounded_label_can_be_vouched_for() -> None:
    """allow_unbounded lets a deliberately bounded label through."""
    m = obskit.counter("tenants", "Per tenant.", ["user"], allow_unbounded=["user"], limit=3)
    m.labels("acme").inc()
    assert 1.0 == get_sample_value("tenants_total", {"user": "acme"})


def test_redeclaring_returns_the_same_instrument_or_fails_clearly() -> None:
    """Same name, kind and labels give the same object; a conflicting one is refused."""
    a = obskit.counter("same", "Same.", ["k"])
    assert a is obskit.counter("same", "Same.", ["k"])
    with pytest.raises(ValueError, match="already declared"):
        obskit.gauge("same", "Same.", ["k"])


def test_wrong_number_of_label_values_is_a_programming_error() -> None:
    """Passing too few values is the caller's bug and is reported as such."""
    m = obskit.counter("arity", "Arity.", ["a", "b"])
    with pytest.raises(ValueError, match="takes 2 label values"):
        m.labels("only-one")


def test_a_million_distinct_values_keep_series_bounded_and_memory_flat() -> None:
    """1,000,000 distinct values (paths, user ids): series stay at the limit, memory stays flat."""
    import psutil

    paths = obskit.counter("raw_paths", "Raw paths.", ["path_template"], limit=100)
    users = obskit.histogram("per_user", "Per user.", ["tier"], limit=50)
    for i in range(20_000):  # warm up: fill the limits and the overflow series
        paths.labels(f"/items/{i}").inc()
        users.labels(f"user-{i}").observe(0.1)
    gc.collect()
    # tracemalloc over a slice (it slows every allocation), RSS over the whole million.
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000, 120_000):
        paths.labels(f"/items/{i}").inc()
        users.labels(f"user-{i}").observe(0.1)
    gc.collect()
    growth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    rss_before = psutil.Process().memory_info().rss
    for i in range(120_000, 1_000_000):
        paths.labels(f"/items/{i}").inc()
        if i % 10 == 0:
            users.labels(f"user-{i}").observe(0.1)
    rss_growth = psutil.Process().memory_info().rss - rss_before
    assert (100, 50) == (paths.series_count(), users.series_count())
    assert growth < 64 * 1024, f"traced memory grew by {growth} bytes"
    assert rss_growth < 8 * 1024 * 1024, f"RSS grew by {rss_growth} bytes"
    assert 1_000_000.0 == sum(
        get_sample_value("raw_paths_total", {"path_template": v}) or 0.0
        for v in [f"/items/{i}" for i in range(100)] + [OVERFLOW]
    )


def test_concurrent_new_label_sets_respect_the_limit() -> None:
    """Threads racing to add label sets never exceed the cap or lose increments."""
    m = obskit.counter("raced", "Raced.", ["k"], limit=64)

    def work(offset: int) -> None:
        for i in range(2_000):
            m.labels(f"{offset}-{i % 200}").inc()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    body = render(None)[0].decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("raced_total{")
    )
    assert 64 == m.series_count()
    assert 16_000.0 == total


def test_obskit_cardinality_reports_series_against_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`obskit cardinality URL` reads /metrics and shows series, limit and folded counts."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from obskit.cli import main
    from obskit.wsgi import ObskitMiddleware

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    m = obskit.counter("paths_seen", "Paths.", ["p"], limit=4)
    for i in range(10):
        m.labels(f"/x/{i}").inc()

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        return [b""]

    server = make_server("127.0.0.1", 0, ObskitMiddleware(app), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = main(["cardinality", f"http://127.0.0.1:{server.server_port}/metrics"])
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    assert 0 == code
    row = next(line for line in out.splitlines() if line.startswith("paths_seen"))
    assert ["paths_seen", "4", "4", "100%", "6"] == row.split()[:5]


def test_label_rule_accepts_lists_and_pattern_strings_directly() -> None:
    """LabelRule(allow=[...]) and LabelRule(allow="regex") work like LabelRule.of()."""
    m = obskit.counter(
        "ruled",
        "Ruled.",
        ["a", "b"],
        rules={"a": LabelRule(allow=["x", "y"]), "b": LabelRule(allow=r"[0-9]+")},
    )
    m.labels("x", "12").inc()
    m.labels("z", "ab").inc()
    assert 1.0 == get_sample_value("ruled_total", {"a": "x", "b": "12"})
    assert 1.0 == get_sample_value("ruled_total", {"a": OTHER, "b": OTHER})


def test_default_limit_before_configure_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A metric declared before configure() honours OBSKIT_CARDINALITY_LIMIT."""
    monkeypatch.setenv("OBSKIT_CARDINALITY_LIMIT", "5")
    assert 5 == obskit.counter("early_declared", "Early.", ["k"]).limit


# -- one limit across processes (multi-process metrics) -------------------------------------------

_WORKER = """
import json, sys, obskit
from obskit.metrics.exposition import render
obskit.configure(traces_exporter="none", runtime_metrics=False, multiproc_dir=sys.argv[1])
hits = obskit.counter("page_hits", "Hits.", ["page"], limit=3)
for page in sys.argv[2:]:
    hits.labels(page).inc()
print(json.dumps(sorted(hits._guard._series)))
"""


def _worker(directory: str, *pages: str) -> list[list[str]]:
    import json
    import subprocess
    import sys

    from tests.child_process import child_env

    done = subprocess.run(
        [sys.executable, "-c", _WORKER, directory, *pages],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    admitted: list[list[str]] = json.loads(done.stdout)
    return admitted


def test_the_limit_holds_across_processes_sharing_a_multiprocess_directory(
    tmp_path: Path,
) -> None:
    """Two worker processes, one after the other as gunicorn replaces a worker, each meeting
    new pages: the label sets admitted by both stay within the one limit; a page the first
    admitted keeps its series in the second; the others fold, and the scrape sums them."""
    directory = str(tmp_path)
    assert [["a"], ["b"]] == _worker(directory, "a", "b", "a")
    assert [["b"], ["c"]] == _worker(directory, "b", "c", "d", "e")  # d, e: no place left
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    hits = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("page_hits_total{")
    }
    assert {"a": 2.0, "b": 2.0, "c": 1.0, OVERFLOW: 2.0} == hits


def test_shared_label_sets_survive_a_torn_line_and_a_broken_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line left half-written by a killed worker is skipped and ended before the next one;
    a file that cannot be used falls back to the per-process limit, counted, never raised."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "obskit_labels_pages.txt").write_bytes(b'["x"]\n["y')  # torn: never finished
    pages = obskit.counter("pages", "Pages.", ["page"], limit=2)
    pages.labels("z").inc()
    pages.labels("w").inc()  # "x" and "z" hold the two places
    assert 1.0 == get_sample_value("pages_total", {"page": "z"})
    assert 1.0 == get_sample_value("pages_total", {"page": OVERFLOW})
    assert b'["x"]\n["y\n["z"]\n' == (tmp_path / "obskit_labels_pages.txt").read_bytes()
    assert 2.0 == get_sample_value("obskit_cardinality_series", {"metric": "pages"})

    monkeypatch.setattr(_state, "raise_internal_errors", False)
    (tmp_path / "obskit_labels_topics.txt").mkdir()  # cannot be opened as a file
    topics = obskit.counter("topics", "Topics.", ["topic"], limit=2)
    topics.labels("t").inc()
    assert 1.0 == get_sample_value("topics_total", {"topic": "t"})
    assert 1.0 == get_sample_value(
        "obskit_internal_errors_total", {"component": "cardinality_shared"}
    )


def test_a_label_file_held_by_a_stuck_process_does_not_hold_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the label file's lock and does not let go (a worker stopped in
    a debugger, SIGSTOP): a new label set waits a bounded moment, then the per-process limit
    decides, and it is counted -- the request is not held."""
    import fcntl
    import time

    from obskit.metrics._shared import LOCK_WAIT, label_file_name

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(_state, "raise_internal_errors", False)
    with open(tmp_path / label_file_name("stuck"), "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # its own open file: it excludes us too
        stuck = obskit.counter("stuck", "Stuck.", ["k"], limit=5)
        started = time.monotonic()
        stuck.labels("a").inc()
        waited = time.monotonic() - started
        started = time.monotonic()
        stuck.labels("b").inc()  # the file rests a while: no second wait
        again = time.monotonic() - started
    assert LOCK_WAIT <= waited < LOCK_WAIT + 1.0
    assert again < LOCK_WAIT
    assert 1.0 == get_sample_value("stuck_total", {"k": "a"})
    assert 1.0 == get_sample_value("stuck_total", {"k": "b"})
    assert 2.0 == get_sample_value(
        "obskit_internal_errors_total", {"component": "cardinality_shared"}
    )
