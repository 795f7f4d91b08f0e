"""The connection-leak post-mortem, replayed against a real PostgreSQL.

The seed's incident: order-service returned its connection only on the success path
(``except Exception: pass`` -- "Connection never returned on exception"), the pool filled up over
hours, and requests started failing before anyone knew why: there was no pool-exhaustion alert, and
"missing metrics (pool exhaustion) delayed diagnosis". Here the same bug runs against a SQLAlchemy
pool instrumented by obskit, and the test reads ``/metrics`` -- exactly what Prometheus would
scrape -- to show the warning signs (utilization pinned at 1.0, callers queueing, wait time
growing) appear *before* the first request fails, and that the failures are then counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from obskit.metrics.exposition import render
from obskit.metrics.pools import instrument_psycopg_pool, instrument_sqlalchemy_pool
from obskit.testing import get_sample_value
from tests.services import DSN, URL, require_postgres

pytestmark = [pytest.mark.services, pytest.mark.e2e]

#: Concurrent healthy requests per step: with one free connection they take ~6 x 25 ms, well
#: inside the 0.5 s pool timeout, so only a fully leaked pool makes them fail.
BURST = 6


def scrape(resource: str) -> dict[str, float]:
    """The pool's USE numbers, parsed from the /metrics text a scraper would get."""
    body, _ = render(None)
    values = {"errors_timeout": 0.0, "errors_failure": 0.0, "waiters": 0.0, "in_use": 0.0}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.labels.get("resource") != resource or s.name.endswith("_created"):
                continue
            if s.name == "resource_errors_total":
                values[f"errors_{s.labels['reason']}"] = s.value
            elif s.name == "resource_wait_seconds_bucket":
                if s.labels["le"] == "0.025":
                    values["waits_under_25ms"] = s.value
            else:
                values[s.name.removeprefix("resource_")] = s.value
    return values


class Timeline:
    """Scrapes of /metrics stamped with when they finished, from any thread."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.points: list[tuple[float, str, dict[str, float]]] = []
        self._lock = threading.Lock()

    def take(self, label: str) -> dict[str, float]:
        values = scrape(self.resource)
        with self._lock:
            self.points.append((time.perf_counter(), label, values))
        return values

    def before(self, moment: float) -> list[dict[str, float]]:
        """Every scrape that had completed before ``moment``."""
        return [values for at, _, values in self.points if at < moment]


def test_connection_leak_shows_saturation_before_requests_fail() -> None:
    """Utilization hits 1.0 and waiters/wait time rise in /metrics before the first pool
    timeout; the timeouts are then counted in resource_errors_total{reason="timeout"}."""
    require_postgres()
    import sqlalchemy as sa

    engine = sa.create_engine(URL, pool_size=5, max_overflow=0, pool_timeout=0.5)
    tracker = instrument_sqlalchemy_pool(engine, name="orders-db")
    timeline = Timeline("orders-db")
    leaked: list[Any] = []
    failures: list[float] = []  # when each request saw the pool's TimeoutError
    failures_lock = threading.Lock()

    def process_payment(order: int) -> None:
        """The post-mortem's buggy handler: the connection is returned on success only."""
        conn = engine.connect()
        try:
            conn.exec_driver_sql("SELECT 1")
            raise RuntimeError(f"payment for order {order} declined")
        except Exception:
            # BUG: "Connection never returned on exception". The object stays referenced (as
            # a real leak's does, e.g. from a cache or a traceback), so it is never returned.
            leaked.append(conn)

    def lookup_order() -> None:
        """A healthy handler: one short query, connection returned."""
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_sleep(0.02)")
        except sa.exc.TimeoutError:
            with failures_lock:
                failures.append(time.perf_counter())

    def burst(step: int, requests: int = BURST) -> None:
        """Concurrent healthy requests while /metrics is scraped every 20 ms."""
        done = threading.Event()

        def sampler() -> None:
            while not done.is_set():
                timeline.take(f"during burst {step}")
                time.sleep(0.02)

        watcher = threading.Thread(target=sampler)
        watcher.start()
        workers = [threading.Thread(target=lookup_order) for _ in range(requests)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        done.set()
        watcher.join()

    try:
        timeline.take("start")
        burst(0)  # warm-up: the pool opens its five connections
        warm = timeline.take("warm")
        for step in range(1, 6):
            process_payment(step)
            after_leak = timeline.take(f"after leak {step}")
            # The leak's signature: connections in use with no request running.
            assert float(step) == after_leak["in_use"]
            burst(step)
            timeline.take(f"after burst {step}")

        # -- what the numbers show ------------------------------------------------------------
        assert BURST == len(failures)  # once the pool is fully leaked, every request times out
        first_failure = min(failures)
        assert [] == [v for v in timeline.before(first_failure) if v["errors_timeout"] > 0]
        before = timeline.before(first_failure)
        assert 5.0 == max(v["capacity"] for v in before)
        # Utilization pinned at 1.0 -- at rest, after the fifth leak -- before any failure.
        assert any(v["utilization_ratio"] == 1.0 and v["waiters"] == 0 for v in before)
        # Saturation rose before any failure: callers queued, and successful waits took time.
        assert 1.0 <= max(v["waiters"] for v in before)
        assert any(
            v["waiters"] == BURST and v["utilization_ratio"] == 1.0 for v in before
        )  # the last burst, queued on an exhausted pool, before the timeouts fire
        # ... and, with every connection already open, successful waits took longer than a
        # query (25 ms): requests queueing for the connections the leak left.
        slow_waits_warm = warm["wait_seconds_count"] - warm["waits_under_25ms"]
        slow_waits = before[-1]["wait_seconds_count"] - before[-1]["waits_under_25ms"]
        assert slow_waits_warm + 1 <= slow_waits
        assert warm["wait_seconds_sum"] < before[-1]["wait_seconds_sum"]
        # Afterwards the failures are counted, and nobody is left waiting.
        end = timeline.take("end")
        assert (float(BURST), 0.0, 0.0) == (
            end["errors_timeout"],
            end["waiters"],
            end["errors_failure"],
        )
        assert (5.0, 1.0) == (end["in_use"], end["utilization_ratio"])
        assert 5 == tracker.in_use
        if os.environ.get("OBSKIT_PRINT_TIMELINE"):
            for at, label, values in timeline.points:
                print(f"{at - first_failure:+.3f} {label:16} {values}")
    finally:
        for conn in leaked:
            conn.close()
        leaked.clear()
        engine.dispose()
    assert 0.0 == get_sample_value("resource_in_use", {"resource": "orders-db"})


def test_sqlalchemy_instrumentation_follows_engine_dispose() -> None:
    """After engine.dispose() the new pool is still measured; instrumenting is idempotent."""
    require_postgres()
    import sqlalchemy as sa

    engine = sa.create_engine(URL, pool_size=2, max_overflow=1, pool_timeout=0.2)
    try:
        tracker = instrument_sqlalchemy_pool(engine, name="disposed-db")
        assert tracker is instrument_sqlalchemy_pool(engine)
        assert 3.0 == get_sample_value("resource_capacity", {"resource": "disposed-db"})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        with engine.connect() as one, engine.connect() as two:
            assert 2.0 == get_sample_value("resource_in_use", {"resource": "disposed-db"})
            one.exec_driver_sql("SELECT 1")
            two.exec_driver_sql("SELECT 1")
        assert 3.0 == get_sample_value("resource_wait_seconds_count", {"resource": "disposed-db"})
        assert 0.0 == get_sample_value("resource_in_use", {"resource": "disposed-db"})
    finally:
        engine.dispose()


def test_psycopg_pool_waiters_match_its_own_stats() -> None:
    """getconn/putconn drive in_use; a blocked getconn is a waiter (as get_stats() says) and its
    PoolTimeout is counted."""
    require_postgres()
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(DSN, min_size=1, max_size=2, timeout=0.3, open=True)
    try:
        tracker = instrument_psycopg_pool(pool, name="pg-pool")
        assert tracker is instrument_psycopg_pool(pool)
        first = pool.getconn()
        with pool.connection() as second:
            second.execute("SELECT 1")
            assert (2.0, 1.0) == (
                get_sample_value("resource_in_use", {"resource": "pg-pool"}),
                get_sample_value("resource_utilization_ratio", {"resource": "pg-pool"}),
            )
            seen: dict[str, Any] = {}

            def blocked() -> None:
                try:
                    pool.getconn()
                except psycopg_pool.PoolTimeout as exc:
                    seen["error"] = exc

            waiter = threading.Thread(target=blocked)
            waiter.start()
            deadline = time.monotonic() + 2
            while tracker.waiters == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.02)
            assert 1.0 == get_sample_value("resource_waiters", {"resource": "pg-pool"})
            assert 1 == pool.get_stats().get("requests_waiting")
            waiter.join()
            assert isinstance(seen["error"], psycopg_pool.PoolTimeout)
        pool.putconn(first)
        labels = {"resource": "pg-pool"}
        assert (0.0, 0.0) == (
            get_sample_value("resource_in_use", labels),
            get_sample_value("resource_waiters", labels),
        )
        assert 1.0 == get_sample_value("resource_errors_total", {**labels, "reason": "timeout"})
        assert 3.0 == get_sample_value("resource_wait_seconds_count", labels)
        pool.resize(1, 4)
        with pool.connection():
            assert 4.0 == get_sample_value("resource_capacity", labels)
    finally:
        pool.close()


def test_async_psycopg_pool_is_counted() -> None:
    """An AsyncConnectionPool's getconn/putconn (and connection()) are counted the same way."""
    require_postgres()
    import psycopg_pool

    async def main() -> tuple[float | None, float | None]:
        pool = psycopg_pool.AsyncConnectionPool(DSN, min_size=1, max_size=2, open=False)
        await pool.open()
        try:
            instrument_psycopg_pool(pool, name="pg-async-pool")
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                during = get_sample_value("resource_in_use", {"resource": "pg-async-pool"})
            return during, get_sample_value("resource_in_use", {"resource": "pg-async-pool"})
        finally:
            await pool.close()

    assert (1.0, 0.0) == asyncio.run(main())


class _CuttableProxy:
    """A TCP proxy to PostgreSQL on loopback whose ``cut()`` closes it and every connection
    through it: the database going away under a pool that holds connections."""

    def __init__(self, port: int) -> None:
        import socket

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.sockets: list[Any] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                return
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        import socket

        with contextlib.suppress(OSError):  # wakes the accept() under way (close() alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


# A bug a review found, since fixed (2026-11-25): a failure to get a connection was counted
# only when _do_get opened a new one; a pool that holds connections hands one out from _do_get
# and reconnects it after (an invalidated connection, a failed pre-ping), so a database that
# went down under a warm pool -- the outage of docs/use.md's "database down" -- counted nothing
@pytest.mark.parametrize("pre_ping", [False, True])
def test_a_database_gone_under_a_warm_pool_counts_each_failed_checkout(pre_ping: bool) -> None:
    require_postgres()
    import sqlalchemy as sa

    proxy = _CuttableProxy(sa.make_url(URL).port or 5432)
    url = sa.make_url(URL).set(host="127.0.0.1", port=proxy.port)
    engine = sa.create_engine(
        url, pool_size=2, max_overflow=0, pool_timeout=1.0, pool_pre_ping=pre_ping,
        connect_args={"connect_timeout": 2},
    )  # fmt: skip
    name = f"gone-db-{pre_ping}"
    try:
        instrument_sqlalchemy_pool(engine, name=name)
        with engine.connect() as one, engine.connect() as two:  # the pool holds two now
            one.exec_driver_sql("SELECT 1")
            two.exec_driver_sql("SELECT 1")
        proxy.cut()
        failed_checkouts = 0
        for _ in range(4):
            try:
                conn = engine.connect()
            except sa.exc.OperationalError:
                failed_checkouts += 1
                continue
            with conn, contextlib.suppress(sa.exc.OperationalError):
                conn.exec_driver_sql("SELECT 1")  # a dead connection handed out: invalidated
        assert failed_checkouts >= 3
        assert failed_checkouts == scrape(name)["errors_failure"]
        assert 0.0 == scrape(name)["in_use"]
    finally:
        proxy.cut()
        engine.dispose()
