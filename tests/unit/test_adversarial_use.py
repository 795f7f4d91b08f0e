"""Adversarial review of USE metrics and their ready instrumentations, the runtime metrics and the
gunicorn integration (``child_exit``, ``obskit.gunicorn.Logger``) with multi-process metrics.

The pools are real: SQLAlchemy and psycopg_pool against the PostgreSQL on 127.0.0.1:5432 (a test
needing it fails under ``CI=true`` when it is down, and skips elsewhere), with connections killed
by ``pg_terminate_backend``, pools exhausted, timed out, closed under a waiter, cancelled mid-wait
and mid-query. gunicorn runs for real on a free loopback port with two workers, workers killed
with SIGKILL or recycled by ``max_requests``; every server is killed in a ``finally``.

Tests marked ``xfail(strict=True)`` pin an obskit bug still open (the reason names where and why);
the others pin behaviour no other test covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import obskit
from obskit import _state
from obskit.metrics import runtime as runtime_module
from obskit.metrics.pools import (
    instrument_asyncio_queue,
    instrument_asyncio_semaphore,
    instrument_psycopg_pool,
    instrument_sqlalchemy_pool,
)
from obskit.metrics.runtime import (
    LoopLagMonitor,
    instrument_runtime,
    start_loop_lag_monitor,
    uninstrument_runtime,
)
from obskit.metrics.use import use
from obskit.testing import get_sample_value, reset
from tests.child_process import child_env
from tests.loopback import free_port
from tests.services import DSN, URL, require_postgres

#: Nothing listens there: connecting is refused at once.
REFUSED_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
#: Bound on every wait for a gunicorn worker or a file to appear.
DEADLINE = 15.0


@pytest.fixture
def resource_limit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """obskit configured with cardinality_limit=2 and resource_* declared afresh under it.

    A metric keeps the limit it was declared with (docs/metrics.md), and instruments outlive
    ``reset()``: the resource_* declarations go in a copy of the table that is dropped after
    the test, so neither this limit nor one declared earlier leaks between tests.
    """
    kept = {k: v for k, v in _state.instruments.items() if not k.startswith("resource_")}
    monkeypatch.setattr(_state, "instruments", kept)
    reset()  # a fresh registry without the resource_* series an earlier test declared
    obskit.configure(traces_exporter="none", cardinality_limit=2)


def value(name: str, resource: str, **labels: str) -> float | None:
    """One sample of a resource_* metric in obskit's registry."""
    return get_sample_value(name, {"resource": resource, **labels})


def terminate_backend(pid: int) -> None:
    """Kill one PostgreSQL backend from another session, as a DBA or a failover would."""
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


# =================================================================================================
# The tracker behind the cardinality guard
# =================================================================================================


# A bug this test found, since fixed: use.py _declare/UseTracker._kids: a tracker takes its children
# through  the guard once and caches them in _Children, the __overflow__ child included (which
# Instrument.folded says a caller must not keep); so obskit_cardinality_overflow_total counts  that
# one labels() call per metric and none of the writes that then land in __overflow__  (red.py and
# the HTTP pipeline check folded() and do not cache it)
@pytest.mark.usefixtures("resource_limit_2")
def test_writes_of_a_tracker_folded_into_overflow_are_counted() -> None:
    """A tracker past the resource_* series limit keeps counting its folded writes."""
    use("adv-first", capacity=4)
    use("adv-second", capacity=4)
    third = use("adv-third", capacity=4)  # past the limit: its series fold into __overflow__
    labels = {"metric": "resource_in_use"}
    before = get_sample_value("obskit_cardinality_overflow_total", labels)
    for _ in range(5):
        with third:
            pass
    assert 0.0 == value("resource_in_use", "__overflow__")
    after = get_sample_value("obskit_cardinality_overflow_total", labels)
    assert before is not None
    assert after is not None
    assert after >= before + 10  # ten writes of in_use folded (five acquires, five releases)


# A bug this test found, since fixed: use.py UseTracker (_publish_in_use/_publish_all): every
# tracker *sets*  its gauges to its own absolute counts, so trackers folded into the one
# __overflow__ series  overwrite each other and it shows the last writer's in_use and capacity
# instead of the  totals docs/metrics.md promises for the overflow series ('totals stay right')
@pytest.mark.usefixtures("resource_limit_2")
def test_resource_gauges_folded_into_overflow_keep_their_totals() -> None:
    """Two trackers past the limit, one unit in use each: __overflow__ says 2 in use of 8."""
    use("adv-first", capacity=4)
    use("adv-second", capacity=4)
    third = use("adv-third", capacity=4)
    fourth = use("adv-fourth", capacity=4)
    with third, fourth:
        overflow = (
            value("resource_in_use", "__overflow__"),
            value("resource_capacity", "__overflow__"),
        )
    assert (2.0, 8.0) == overflow


# =================================================================================================
# SQLAlchemy, against the real PostgreSQL
# =================================================================================================


def test_sqlalchemy_in_use_follows_the_pool_through_real_failures() -> None:
    """in_use equals the pool's own checkedout() through: a connection out before instrumenting,
    a backend killed mid-use, a leaked connection garbage-collected, overflow then a pool
    timeout, dispose() with a connection out; a refused connect counts one failure. Waiters
    always return to 0."""
    require_postgres()
    import sqlalchemy as sa

    engine = sa.create_engine(URL, pool_size=2, max_overflow=1, pool_timeout=0.2)
    name = "adv-sa-failures"
    held: list[Any] = []
    try:
        early = engine.connect()  # checked out before obskit knew the pool
        held.append(early)
        tracker = instrument_sqlalchemy_pool(engine, name=name)

        def agrees(expected: int) -> None:
            assert (expected, expected, float(expected), 0.0) == (
                engine.pool.checkedout(),
                tracker.in_use,
                value("resource_in_use", name),
                value("resource_waiters", name),
            )

        agrees(1)
        killed = engine.connect()
        pid = killed.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert isinstance(pid, int)
        terminate_backend(pid)
        with pytest.raises(sa.exc.OperationalError):
            killed.exec_driver_sql("SELECT 1")
        assert killed.invalidated  # SQLAlchemy gave the record back to the pool
        agrees(1)
        killed.close()
        agrees(1)

        leaked = engine.connect()
        leaked.exec_driver_sql("SELECT 1")
        agrees(2)
        del leaked
        gc.collect()  # the pool's weakref callback checks the record in
        agrees(1)

        held += [engine.connect(), engine.connect()]  # the pool's 2 + 1 overflow
        agrees(3)
        assert 1.0 == value("resource_utilization_ratio", name)
        with pytest.raises(sa.exc.TimeoutError):
            engine.connect()
        agrees(3)
        assert 1.0 == value("resource_errors_total", name, reason="timeout")
        for conn in held:
            conn.close()
        held.clear()
        agrees(0)

        out = engine.connect()
        old_pool = engine.pool
        engine.dispose()  # a new pool replaces the old one; `out` belongs to the old
        with engine.connect() as fresh:
            fresh.exec_driver_sql("SELECT 1")
            assert 2 == tracker.in_use
        out.close()
        agrees(0)
        old_pool.dispose()  # closes `out`'s connection, checked in to the old pool
        assert 0.0 == value("resource_errors_total", name, reason="failure")
    finally:
        for conn in held:
            conn.close()
        engine.dispose()

    refused = sa.create_engine(REFUSED_URL, pool_size=1, max_overflow=0)
    try:
        instrument_sqlalchemy_pool(refused, name="adv-sa-refused")
        with pytest.raises(sa.exc.OperationalError):
            refused.connect()
        assert (1.0, 0.0, 0.0) == (
            value("resource_errors_total", "adv-sa-refused", reason="failure"),
            value("resource_in_use", "adv-sa-refused"),
            value("resource_waiters", "adv-sa-refused"),
        )
    finally:
        refused.dispose()


# A bug this test found, since fixed: pools.py instrument_sqlalchemy_pool: idempotence is keyed on
# the object  passed (the mark is set on the Engine, or on the Pool), so instrumenting an engine and
# then  its engine.pool under the same name gets the same tracker from use() but adds a second set
# of checkout/checkin listeners with their own `out` set: every checkout counts twice
def test_sqlalchemy_engine_and_its_pool_instrumented_twice_count_once() -> None:
    """Instrumenting an engine and its pool (same name) counts one checkout as one unit."""
    require_postgres()
    import sqlalchemy as sa

    engine = sa.create_engine(URL, pool_size=2, max_overflow=0, pool_timeout=0.2)
    try:
        tracker = instrument_sqlalchemy_pool(engine, name="adv-sa-twice")
        assert tracker is instrument_sqlalchemy_pool(engine.pool, name="adv-sa-twice")
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            during = (tracker.in_use, value("resource_utilization_ratio", "adv-sa-twice"))
        assert (1, 0.5) == during
        assert 0 == tracker.in_use
    finally:
        engine.dispose()


def test_sqlalchemy_async_engine_counts_checkouts_waiters_and_timeouts() -> None:
    """An ``AsyncEngine`` (psycopg's async driver, SQLAlchemy's asyncio pool, callers as
    greenlets on one thread): in_use follows the pool, a task waiting for a connection is one
    waiter while it waits and its wait is observed, a pool timeout counts ``reason="timeout"``,
    and everything returns to 0."""
    require_postgres()
    from sqlalchemy.exc import TimeoutError as PoolTimeout
    from sqlalchemy.ext.asyncio import create_async_engine

    name = "adv-sa-async"
    engine = create_async_engine(URL, pool_size=2, max_overflow=0, pool_timeout=0.3)
    tracker = instrument_sqlalchemy_pool(engine, name=name)
    assert tracker is instrument_sqlalchemy_pool(engine.sync_engine, name=name)
    waits = {"resource": name}

    async def until(check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not check():
            assert time.monotonic() < deadline, "the pool never got there"
            await asyncio.sleep(0.005)

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
                await release.wait()

        async def query() -> int:
            async with engine.connect() as conn:
                return (await conn.exec_driver_sql("SELECT 7")).scalar_one()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await until(lambda: tracker.in_use == 2)
        seen.append((engine.sync_engine.pool.checkedout(), value("resource_in_use", name)))
        seen.append(value("resource_utilization_ratio", name))
        waiting = asyncio.create_task(query())
        await until(lambda: value("resource_waiters", name) == 1.0)
        await asyncio.sleep(0.05)  # the waiter waits: its wait is at least this long
        release.set()
        seen.append(await waiting)
        await asyncio.gather(*holders)
        seen.append(
            (tracker.in_use, value("resource_in_use", name), value("resource_waiters", name))
        )

        release.clear()
        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await until(lambda: tracker.in_use == 2)
        try:
            await query()
        except PoolTimeout:
            seen.append("timed out")
        release.set()
        await asyncio.gather(*holders)
        seen.append((tracker.in_use, value("resource_waiters", name)))
        await engine.dispose()
        return seen

    count_before = get_sample_value("resource_wait_seconds_count", waits) or 0.0
    sum_before = get_sample_value("resource_wait_seconds_sum", waits) or 0.0
    try:
        seen = asyncio.run(scenario())
    finally:
        engine.sync_engine.dispose()
    assert [(2, 2.0), 1.0, 7, (0, 0.0, 0.0), "timed out", (0, 0.0)] == seen
    assert 1.0 == value("resource_errors_total", name, reason="timeout")
    assert 0.0 == value("resource_errors_total", name, reason="failure")
    waited = (get_sample_value("resource_wait_seconds_sum", waits) or 0.0) - sum_before
    # Every checkout's wait is observed (4 immediate ones, the waiter's, the timed-out one's).
    assert 6.0 == (get_sample_value("resource_wait_seconds_count", waits) or 0.0) - count_before
    assert waited >= 0.05 + 0.3


# A bug this test found, since fixed: pools.py instrument_sqlalchemy_pool: the default name is
# 'sqlalchemy:<database>' (host, port, URL options ignored) and use() returns the existing  tracker
# for the same name and settings, so two engines on one database (a writer and a  reader) share one
# tracker: in_use sums both pools against one pool's capacity,  utilization 2.0 (with other pool
# sizes use() raises ValueError into the app instead)
def test_two_engines_on_one_database_keep_their_utilization_in_range() -> None:
    """Two 1-connection engines on one database, both checked out: no ratio above 1."""
    require_postgres()
    import sqlalchemy as sa

    writer = sa.create_engine(f"{URL}?application_name=writer", pool_size=1, max_overflow=0)
    reader = sa.create_engine(f"{URL}?application_name=reader", pool_size=1, max_overflow=0)
    try:
        trackers = {instrument_sqlalchemy_pool(writer), instrument_sqlalchemy_pool(reader)}
        with writer.connect(), reader.connect():
            ratios = {t.name: value("resource_utilization_ratio", t.name) for t in trackers}
        assert all(ratio is not None and 0.0 <= ratio <= 1.0 for ratio in ratios.values()), ratios
    finally:
        writer.dispose()
        reader.dispose()


# =================================================================================================
# psycopg_pool, against the real PostgreSQL
# =================================================================================================


async def test_async_psycopg_pool_cancellations_and_failures_leave_nothing_behind() -> None:
    """An AsyncConnectionPool exhausted: getconn() cut by asyncio.wait_for and by task.cancel()
    leaves no waiter and counts no error (cancellation), a query cut by asyncio.wait_for gives
    its connection back, a connection whose backend was killed is given back, and close() under
    a waiting getconn() counts one failure (PoolClosed)."""
    require_postgres()
    import psycopg
    import psycopg_pool

    name = "adv-pg-async"
    pool = psycopg_pool.AsyncConnectionPool(DSN, min_size=1, max_size=2, timeout=5, open=False)
    await pool.open(wait=True, timeout=5)
    out: list[Any] = []
    try:
        tracker = instrument_psycopg_pool(pool, name=name)
        out += [await pool.getconn(), await pool.getconn()]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.getconn(), 0.05)
        assert (2, 0) == (tracker.in_use, tracker.waiters)
        waiting = asyncio.create_task(pool.getconn())
        deadline = time.monotonic() + DEADLINE
        while tracker.waiters == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert 1.0 == value("resource_waiters", name)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (2, 0) == (tracker.in_use, tracker.waiters)
        assert (0.0, 0.0) == (
            value("resource_errors_total", name, reason="timeout"),
            value("resource_errors_total", name, reason="failure"),
        )
        for conn in out:
            await pool.putconn(conn)
        out.clear()
        assert 0 == tracker.in_use

        async def slow_query() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow_query(), 0.1)
        assert (0, 0) == (tracker.in_use, tracker.waiters)

        doomed = await pool.getconn()
        terminate_backend(doomed.info.backend_pid)
        with pytest.raises(psycopg.OperationalError):
            await doomed.execute("SELECT 1")
        await pool.putconn(doomed)  # the pool discards it
        assert 0 == tracker.in_use

        out += [await pool.getconn(), await pool.getconn()]
        blocked = asyncio.create_task(pool.getconn())
        deadline = time.monotonic() + DEADLINE
        while tracker.waiters == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await pool.close(timeout=1)
        with pytest.raises(psycopg_pool.PoolClosed):
            await blocked
        assert (2, 0) == (tracker.in_use, tracker.waiters)
        assert 1.0 == value("resource_errors_total", name, reason="failure")
        for conn in out:
            await pool.putconn(conn)  # a closed pool closes them: still released
        out.clear()
        assert (0.0, 0.0, 0.0) == (
            value("resource_in_use", name),
            value("resource_waiters", name),
            value("resource_errors_total", name, reason="timeout"),
        )
    finally:
        for conn in out:
            await pool.putconn(conn)
        await pool.close(timeout=1)


# A bug this test found, since fixed: pools.py instrument_psycopg_pool putconn wrapper: every
# putconn  releases a unit, including that of a connection handed out before instrumenting (which
# was never counted), so in_use goes to -1 and utilization to -0.5; docs/use.md says such  units are
# 'unknown to the tracker', not subtracted
def test_psycopg_pool_instrumented_with_a_connection_out_never_goes_negative() -> None:
    """A connection taken before instrument_psycopg_pool() and returned after: no negative
    in_use or utilization."""
    require_postgres()
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(DSN, min_size=1, max_size=2, timeout=2, open=False)
    pool.open(wait=True, timeout=5)
    try:
        early = pool.getconn()
        tracker = instrument_psycopg_pool(pool, name="adv-pg-late")
        pool.putconn(early)
        assert (0, 0.0) == (tracker.in_use, value("resource_utilization_ratio", "adv-pg-late"))
    finally:
        pool.close(timeout=1)


# =================================================================================================
# asyncio semaphores and queues
# =================================================================================================


async def test_semaphore_acquire_cut_by_timeouts_and_cancellation_keeps_holders_exact() -> None:
    """acquire() cut by asyncio.wait_for, and a waiter cancelled after release() had already
    woken it (the semaphore then passes the unit on), leave in_use equal to the semaphore's
    holders and no waiter; a cancelled wait is timed but counted as no error."""
    sem = asyncio.Semaphore(2)
    tracker = instrument_asyncio_semaphore(sem, 2, name="adv-sem-cut")

    def holders() -> int:
        return 2 - sem._value

    await sem.acquire()
    await sem.acquire()
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sem.acquire(), 0.01)
    assert (2, 2, 0) == (holders(), tracker.in_use, tracker.waiters)

    woken = asyncio.create_task(sem.acquire())
    behind = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)  # both wait in acquire()
    assert 2 == tracker.waiters
    sem.release()  # hands the unit to `woken`...
    woken.cancel()  # ...which is cancelled before it runs: the unit passes to `behind`
    with pytest.raises(asyncio.CancelledError):
        await woken
    assert await behind
    assert (2, 2, 0) == (holders(), tracker.in_use, tracker.waiters)
    sem.release()
    sem.release()
    assert (0, 0) == (holders(), tracker.in_use)
    assert (0.0, 0.0) == (
        value("resource_errors_total", "adv-sem-cut", reason="timeout"),
        value("resource_errors_total", "adv-sem-cut", reason="failure"),
    )
    assert 7.0 == value("resource_wait_seconds_count", "adv-sem-cut")


# A bug this test found, since fixed: pools.py instrument_asyncio_semaphore: holders from before
# instrumenting are ignored (in_use starts at 0 although capacity - sem._value are held),  so their
# release() takes in_use to -1 and utilization to -0.5
async def test_semaphore_instrumented_while_held_never_goes_negative() -> None:
    """A limiter held when instrumented and released after: in_use 0, utilization 0."""
    sem = asyncio.Semaphore(2)
    await sem.acquire()
    tracker = instrument_asyncio_semaphore(sem, 2, name="adv-sem-late")
    sem.release()
    assert (0, 0.0) == (tracker.in_use, value("resource_utilization_ratio", "adv-sem-late"))


# A bug this test found, since fixed: pools.py
# instrument_asyncio_semaphore/instrument_asyncio_queue: the  default names are constants
# ('asyncio_semaphore', 'asyncio_queue') and use() returns the  existing tracker, so distinct
# objects share one: two 1-slot semaphores held give  utilization 2.0, and each queue's
# set_in_use(qsize()) overwrites the other's level
async def test_default_named_semaphores_and_queues_keep_their_own_numbers() -> None:
    """Two semaphores and two queues instrumented without a name: no ratio above 1, and the
    queued items add up."""
    first, second = asyncio.Semaphore(1), asyncio.Semaphore(1)
    sems = {instrument_asyncio_semaphore(first, 1), instrument_asyncio_semaphore(second, 1)}
    async with first, second:
        ratios = [value("resource_utilization_ratio", t.name) for t in sems]
    assert all(ratio is not None and ratio <= 1.0 for ratio in ratios), ratios

    jobs: asyncio.Queue[int] = asyncio.Queue()
    mails: asyncio.Queue[int] = asyncio.Queue()
    queues = {instrument_asyncio_queue(jobs), instrument_asyncio_queue(mails)}
    for item in range(3):
        jobs.put_nowait(item)
    await mails.put(0)
    assert 4.0 == sum(value("resource_in_use", t.name) or 0.0 for t in queues)


# =================================================================================================
# Runtime metrics
# =================================================================================================


def test_gc_pause_hook_stays_single_across_configure_reset_and_uninstrument() -> None:
    """However often obskit is configured, reset, instrumented and uninstrumented, gc.callbacks
    holds one obskit hook, and it keeps feeding the collector of the current registry."""

    def hooks() -> int:
        return sum(isinstance(cb, runtime_module._GcPauses) for cb in gc.callbacks)

    for round_ in range(3):
        obskit.configure(traces_exporter="none", service_name=f"adv-{round_}")
        instrument_runtime()
        obskit.configure(traces_exporter="none", runtime_metrics=False)
        uninstrument_runtime()
        instrument_runtime()
        reset()
    assert 1 == hooks()
    obskit.configure(traces_exporter="none")
    labels = {"generation": "2"}
    before = get_sample_value("obskit_runtime_gc_pause_seconds_count", labels)
    gc.collect()
    after = get_sample_value("obskit_runtime_gc_pause_seconds_count", labels)
    assert before is not None
    assert after >= before + 1
    assert 1 == hooks()


def test_loop_lag_monitors_survive_repeated_asyncio_run() -> None:
    """A monitor per asyncio.run(): each run's task ends with its loop, the next run's monitor
    writes the same series, stop() on monitors of closed loops is a no-op, and a monitor asked
    for a loop that is closed before it ever ran does nothing and raises nothing."""
    monitors: list[LoopLagMonitor] = []

    async def main() -> None:
        monitors.append(start_loop_lag_monitor(interval=0.01))
        await asyncio.sleep(0.03)
        time.sleep(0.05)  # a blocking call on the loop
        await asyncio.sleep(0.03)

    for _ in range(3):
        asyncio.run(main())
        # The loop closed: its lag gauge is removed, not left at its last value.
        assert None is get_sample_value("asyncio_event_loop_lag_seconds", {"loop": "main"})
    assert all(m._task is not None and m._task.done() for m in monitors)
    assert 0.03 <= min(m.max_lag for m in monitors)
    assert 3.0 <= (
        get_sample_value(
            "asyncio_event_loop_lateness_seconds_bucket", {"loop": "main", "le": "+Inf"}
        )
        or 0.0
    )
    for monitor in monitors:
        monitor.stop()
        monitor.stop()

    loop = asyncio.new_event_loop()
    result: list[LoopLagMonitor] = []
    asker = threading.Thread(
        target=lambda: result.append(start_loop_lag_monitor(loop, 0.01, name="never-ran"))
    )
    asker.start()
    asker.join()
    loop.close()
    result[0].stop()
    assert result[0]._task is None


# A bug this test found, since fixed (in the docs): docs/use.md and runtime.py told users to "use
# the per-worker process_* metrics" in multi-process mode, which /metrics never serves there
def test_multiprocess_metrics_serve_no_per_process_collector(tmp_path: Path) -> None:
    """In multi-process mode a scrape reaches one worker: a per-process value (CPU, memory, GC)
    would jump from worker to worker, so /metrics serves the aggregated metrics only, as
    docs/use.md says (per-process figures come from the container's metrics there)."""
    script = (
        "import sys, obskit\n"
        "from obskit.metrics.exposition import render\n"
        "obskit.configure(traces_exporter='none', multiproc_dir=sys.argv[1])\n"
        "obskit.counter('adv_served', 'Served.').inc()\n"
        "print(render(None)[0].decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "prom")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=child_env(),
    )
    lines = done.stdout.splitlines()
    assert "adv_served_total 1.0" in lines, done.stdout
    assert not [line for line in lines if line.startswith(("process_", "obskit_runtime_cpu"))]
    docs = (Path(__file__).parents[2] / "docs" / "use.md").read_text()
    assert "per-worker `process_*`" not in docs


# =================================================================================================
# gunicorn, for real, with multi-process metrics
# =================================================================================================


class Gunicorn:
    """A gunicorn master started by :func:`run_gunicorn`, its port and its directory."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, cwd: Path) -> None:
        self.process = process
        self.port = port
        self.cwd = cwd

    def log(self) -> str:
        return (self.cwd / "gunicorn.log").read_text(errors="replace")[-3000:]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Until ``condition()``, at most DEADLINE seconds; fails with gunicorn's log."""
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what}:\n{self.log()}")
            time.sleep(0.02)

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def resource(self, resource: str) -> dict[str, float]:
        """The resource_* gauges of ``resource`` in one scrape of /metrics."""
        status, text = self.get("/metrics")
        assert 200 == status, text
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("resource") == resource
            and sample.name
            in ("resource_in_use", "resource_capacity", "resource_utilization_ratio")
        }


@contextlib.contextmanager
def run_gunicorn(cwd: Path, app: str, conf: str, args: list[str], **env: str) -> Iterator[Gunicorn]:
    """Run ``gunicorn -c adv_conf.py ARGS adv_app:app`` in ``cwd`` on a free loopback port;
    terminated (then killed) when the block ends, whatever happened."""
    import gunicorn.config

    (cwd / "adv_app.py").write_text(app)
    (cwd / "adv_conf.py").write_text(conf)
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", "adv_conf.py", "-b", f"127.0.0.1:{port}"]
    argv += ["--graceful-timeout", "2", *args]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")
    argv.append("adv_app:app")
    with (cwd / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Gunicorn(process, port, cwd)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _gauge_pids(directory: Path) -> set[int]:
    """Processes with live gauges in the multi-process directory."""
    return {int(p.stem.rpartition("_")[2]) for p in directory.glob("gauge_livesum_*.db")}


_POOL_APP = """
import atexit
import os
import time
from pathlib import Path

import psycopg_pool

import obskit
from obskit.metrics.pools import instrument_psycopg_pool
from obskit.wsgi import ObskitMiddleware

obskit.configure(traces_exporter="none", runtime_metrics=False)
pool = psycopg_pool.ConnectionPool(DSN, min_size=1, max_size=2, timeout=5, open=True)
# Closed at exit, as psycopg_pool asks: left to its __del__ at interpreter shutdown, the pool's
# threads cannot be joined on Python 3.13 and a recycled worker takes 20 s to exit.
atexit.register(pool.close)
instrument_psycopg_pool(pool, name="adv-pg")


def _app(environ, start_response):
    with pool.connection() as conn:
        conn.execute("SELECT 1")
        if environ["PATH_INFO"] == "/hold":  # hold the connection until the test says
            Path(f"held_{os.getpid()}").touch()
            deadline = time.monotonic() + 10
            while not Path("release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


app = ObskitMiddleware(_app)
"""


@pytest.mark.e2e
@pytest.mark.services
def test_gunicorn_workers_pool_gauges_across_recycling(tmp_path: Path) -> None:
    """Two workers, each with a real psycopg pool of 2 (PROMETHEUS_MULTIPROC_DIR, child_exit):
    one connection held in one worker reads in_use 1, capacity 4 (summed) and utilization 0.5
    (the busiest worker's); after workers are recycled by max_requests, the live gauges are
    those of the two current workers again: capacity 4, in_use 0."""
    require_postgres()
    import psutil

    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    app = f"DSN = {DSN!r}\n{_POOL_APP}"
    conf = "from obskit.gunicorn import child_exit\n"
    args = ["-w", "2", "--max-requests", "3"]
    holder: threading.Thread | None = None
    with run_gunicorn(tmp_path, app, conf, args, PROMETHEUS_MULTIPROC_DIR=str(multiproc)) as server:
        try:
            server.wait_for(lambda: len(_gauge_pids(multiproc)) >= 2, "two workers never booted")
            holder = threading.Thread(target=server.get, args=("/hold",))
            holder.start()
            server.wait_for(lambda: any(tmp_path.glob("held_*")), "no worker holds a connection")
            # The holding worker is busy: the other one answers the scrape.
            assert {
                "resource_in_use": 1.0,
                "resource_capacity": 4.0,
                "resource_utilization_ratio": 0.5,
            } == server.resource("adv-pg")
        finally:
            (tmp_path / "release").touch()
            if holder is not None:
                holder.join(15)
        served = {int(server.get("/")[1]) for _ in range(8)}
        assert 2 < len(served)  # workers were recycled (max_requests=3)
        master = psutil.Process(server.process.pid)

        def settled() -> bool:
            workers = {child.pid for child in master.children()}
            return 2 == len(workers) and workers == _gauge_pids(multiproc)

        server.wait_for(settled, "dead workers' gauges stayed, or new workers never published")
        idle = {
            "resource_in_use": 0.0,
            "resource_capacity": 4.0,
            "resource_utilization_ratio": 0.0,
        }
        # A new worker's gauge file exists a moment before its capacity is written in it (seen
        # on a loaded host): asked again until both are in, each scrape a request of its own.
        server.wait_for(
            lambda: settled() and idle == server.resource("adv-pg"),
            "the scrape never showed the two current workers' idle pools",
        )


_CAPACITY_APP = """
import os

import obskit
from obskit.metrics.use import use
from obskit.wsgi import ObskitMiddleware

obskit.configure(traces_exporter="none", runtime_metrics=False{option})
db = use("adv-db", capacity=10)


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


app = ObskitMiddleware(_app)
"""


@pytest.mark.e2e
# A bug this test found, since fixed: gunicorn.py child_exit: mark_process_dead reads only the
# PROMETHEUS_MULTIPROC_DIR environment variable of the master, which the multiproc_dir  option set
# in the app's configure() (run in each worker, docs/configuration.md) never  reaches; the call
# raises, the except swallows it silently (no warning, no self-metric),  and a SIGKILLed worker's
# live gauges are summed forever: capacity 30 for 2 live workers
def test_child_exit_removes_a_dead_worker_with_the_multiproc_dir_option(tmp_path: Path) -> None:
    """multiproc_dir given to configure() in the app, child_exit in gunicorn.conf.py: after a
    worker is SIGKILLed and replaced, capacity is summed over the 2 live workers (20)."""
    multiproc = tmp_path / "prom"
    app = _CAPACITY_APP.format(option=f", multiproc_dir={str(multiproc)!r}")
    conf = "from obskit.gunicorn import child_exit\n"
    with run_gunicorn(tmp_path, app, conf, ["-w", "2"]) as server:
        server.wait_for(lambda: len(_gauge_pids(multiproc)) >= 2, "two workers never booted")
        first = _gauge_pids(multiproc)
        assert 20.0 == server.resource("adv-db")["resource_capacity"]
        os.kill(min(first), signal.SIGKILL)  # an OOM kill: gunicorn reaps and replaces it
        server.wait_for(lambda: bool(_gauge_pids(multiproc) - first), "no replacement worker")
        assert 20.0 == server.resource("adv-db")["resource_capacity"]


@pytest.mark.e2e
# A bug this test found, since fixed: use.py use()/UseTracker.publish: with a preloaded app the
# tracker  publishes its capacity once, in the gunicorn master; after fork prometheus_client's
# multi-process values start afresh in each worker (new pid, new files) and nothing  re-publishes,
# so resource_capacity is the master's 10, not the sum over the 2 live  workers (20) docs/use.md
# promises (same for instrument_executor & co. at import)
def test_preloaded_app_capacity_is_summed_over_the_workers(tmp_path: Path) -> None:
    """gunicorn --preload, use("adv-db", capacity=10) at import, 2 workers: capacity 20."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    app = _CAPACITY_APP.format(option="")
    conf = (
        "from pathlib import Path\n"
        "from obskit.gunicorn import child_exit\n\n\n"
        "def post_fork(server, worker):\n"
        "    Path(f'forked_{worker.pid}').touch()\n"
    )
    args = ["-w", "2", "--preload"]
    with run_gunicorn(tmp_path, app, conf, args, PROMETHEUS_MULTIPROC_DIR=str(multiproc)) as server:
        server.wait_for(lambda: 2 <= len(list(tmp_path.glob("forked_*"))), "no two workers")
        server.wait_for(lambda: 200 == server.get("/")[0], "the app never answered")
        assert 20.0 == server.resource("adv-db")["resource_capacity"]


_ASGI_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

_ASGI_CONF = """
from pathlib import Path

logger_class = "obskit.gunicorn.Logger"
accesslog = "access.log"


def post_request(worker, req, environ, resp):
    with Path("post_request.log").open("a") as out:
        out.write("ran\\n")
"""


@pytest.mark.e2e
@pytest.mark.skipif(
    importlib.util.find_spec("gunicorn.workers.gasgi") is None,
    reason="this gunicorn has no ASGI worker of its own (-k asgi)",
)
# A bug this test found, since fixed: gunicorn.py Logger.access: calls request_time.total_seconds()
# outside  its try, but gunicorn's own ASGI worker (-k asgi) passes a _RequestTime with only
# .seconds/.microseconds (all glogging's atoms use); the AttributeError escapes access(),  gunicorn
# logs 'Exception in post_request hook' per request, the access line is lost and  the app's
# post_request hook is skipped
def test_gunicorn_logger_under_the_asgi_worker_writes_the_access_line(tmp_path: Path) -> None:
    """gunicorn -k asgi with obskit.gunicorn.Logger: the request gets its access line and the
    post_request hook runs."""
    with run_gunicorn(tmp_path, _ASGI_APP, _ASGI_CONF, ["-w", "1", "-k", "asgi"]) as server:

        def answered() -> bool:
            try:
                return 200 == server.get("/adv-asgi")[0]
            except OSError:
                return False

        server.wait_for(answered, "the ASGI worker never answered")
        time.sleep(0.2)  # the access line is written after the response
    log = server.log()
    access = (tmp_path / "access.log").read_text() if (tmp_path / "access.log").exists() else ""
    assert "Exception in post_request hook" not in log, log
    assert "/adv-asgi" in access
    assert (tmp_path / "post_request.log").exists()


# -- resources that go away ----------------------------------------------------------------------


def _resource_series() -> dict[str, float]:
    """resource_capacity by resource, as a scrape now shows it."""
    from obskit.metrics.exposition import render

    page = render("text/plain")[0].decode()
    return {
        sample.labels["resource"]: sample.value
        for family in text_string_to_metric_families(page)
        if family.name == "resource_capacity"
        for sample in family.samples
    }


# A bug this test found, since fixed: the USE series of an instrumented resource stayed for good
# after it was gone (obskit/metrics/pools.py), and unnamed ones took a new name each time
# (ThreadPoolExecutor-N, pool-N, #2...): short-lived executors left one series each --
# sum(resource_capacity) counted them all -- until the metrics' series limit folded every new
# resource, a real pool included, into __overflow__. A resource freed now takes its series
# with it at the next scrape, and its name is free again.
def test_freed_executors_take_their_series_with_them() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from obskit.metrics.pools import instrument_executor

    for _ in range(50):
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch") as executor:
            instrument_executor(executor)
            executor.submit(int).result()
        del executor
    gc.collect()
    assert {} == {k: v for k, v in _resource_series().items() if k.startswith("batch")}
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="batch") as executor:
        assert "batch" == instrument_executor(executor).name  # not batch#51
        assert 3.0 == _resource_series()["batch"]


def test_a_freed_sqlalchemy_engine_takes_its_series_and_name_with_it() -> None:
    require_postgres()
    import sqlalchemy as sa

    first = sa.create_engine(URL, pool_size=2, max_overflow=0)
    second = sa.create_engine(URL, pool_size=3, max_overflow=0)
    names = [instrument_sqlalchemy_pool(engine).name for engine in (first, second)]
    assert ["sqlalchemy:test", "sqlalchemy:test#2"] == names
    first.dispose()
    del first
    gc.collect()
    assert {"sqlalchemy:test#2": 3.0} == {
        k: v for k, v in _resource_series().items() if k.startswith("sqlalchemy")
    }
    third = sa.create_engine(URL, pool_size=4, max_overflow=0)
    assert "sqlalchemy:test" == instrument_sqlalchemy_pool(third).name
    second.dispose()
    third.dispose()


# A bug a review found, since fixed (2026-11-25): an engine dropped for a new one under the same
# name with another pool size (a configuration reload) kept its name until a full garbage
# collection freed it -- SQLAlchemy engines sit in reference cycles -- so instrumenting the new
# one raised ValueError ("already tracked") into the application
def test_an_engine_replaced_under_its_name_with_a_new_pool_size_is_tracked() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(URL, pool_size=2, max_overflow=0)  # lazy: no connection made
    instrument_sqlalchemy_pool(engine, name="adv-reloaded")
    gc.collect()  # long-lived: in the oldest generation, as after hours of running
    engine.dispose()
    assert any(o is engine for o in gc.get_objects(generation=2))
    engine = sa.create_engine(URL, pool_size=5, max_overflow=0)  # the old one dropped
    try:
        assert 5.0 == instrument_sqlalchemy_pool(engine, name="adv-reloaded").capacity
        assert 5.0 == value("resource_capacity", "adv-reloaded")
    finally:
        engine.dispose()


def test_a_freed_psycopg_pool_takes_its_series_with_it_and_a_closed_one_counts_to_the_end() -> None:
    require_postgres()
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(DSN, min_size=1, max_size=4, open=True, name="adv-gone")
    tracker = instrument_psycopg_pool(pool)
    conn = pool.getconn()
    pool.close()
    assert {"adv-gone": 4.0} == {
        k: v for k, v in _resource_series().items() if k.startswith("adv-gone")
    }
    pool.putconn(conn)  # returned to a closed pool: still released, still counted
    assert 0 == tracker.in_use
    del pool, conn
    gc.collect()
    assert {} == {k: v for k, v in _resource_series().items() if k.startswith("adv-gone")}
    tracker.acquired()  # a closed tracker's writes are not published
    assert {} == {k: v for k, v in _resource_series().items() if k.startswith("adv-gone")}
