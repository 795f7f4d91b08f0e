"""USE trackers: decorator and context managers, exact gauges under concurrency, errors, the
executor/asyncio instrumentation, and the runtime collector with its event-loop lag monitor."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import obskit
from obskit import _state
from obskit.metrics.exposition import render
from obskit.metrics.pools import (
    instrument_asyncio_queue,
    instrument_asyncio_semaphore,
    instrument_executor,
)
from obskit.metrics.runtime import (
    instrument_runtime,
    start_loop_lag_monitor,
    uninstrument_runtime,
)
from obskit.metrics.use import UseTracker, use
from obskit.testing import get_sample_value

# Declared and decorated at import time, before obskit.configure() runs in any test.
IMPORT_TIME = use("import_time_db", capacity=3)


@IMPORT_TIME
def import_time_query(x: int) -> int:
    """Holds one unit of import_time_db while it runs."""
    return x * 2


def sample(name: str, resource: str, **labels: str) -> float | None:
    """One sample of a resource_* metric."""
    return get_sample_value(name, {"resource": resource, **labels})


def in_use(resource: str) -> float | None:
    """resource_in_use for this resource."""
    return sample("resource_in_use", resource)


def waiters(resource: str) -> float | None:
    """resource_waiters for this resource."""
    return sample("resource_waiters", resource)


def errors(resource: str, reason: str) -> float | None:
    """resource_errors_total for this resource and reason."""
    return sample("resource_errors_total", resource, reason=reason)


def wait_count(resource: str) -> float | None:
    """How many waits resource_wait_seconds observed."""
    return sample("resource_wait_seconds_count", resource)


# -- decorator ------------------------------------------------------------------------------------
def test_decorator_sync_function_holds_one_unit_while_running() -> None:
    """A decorated function is one unit in use during the call, none after; signature kept."""
    tracker = use("dec_sync", capacity=4)
    seen: list[float | None] = []

    def raw(a: int, b: str = "x") -> str:
        """Docs."""
        seen.append(in_use("dec_sync"))
        seen.append(sample("resource_utilization_ratio", "dec_sync"))
        return b * a

    work = tracker(raw)
    assert "xx" == work(2)
    assert [1.0, 0.25] == seen
    assert 0.0 == in_use("dec_sync")
    assert 4.0 == sample("resource_capacity", "dec_sync")
    assert inspect.signature(raw) == inspect.signature(work)
    assert ("raw", "Docs.") == (work.__name__, work.__doc__)


async def test_decorator_async_function_holds_one_unit_while_awaited() -> None:
    """A decorated coroutine function stays one, and counts while it is awaited."""
    tracker = use("dec_async", capacity=2)
    seen: list[float | None] = []

    @tracker
    async def work(x: int) -> int:
        seen.append(in_use("dec_async"))
        await asyncio.sleep(0)
        return x + 1

    assert inspect.iscoroutinefunction(work)
    assert ["x"] == list(inspect.signature(work).parameters)
    assert 3 == await work(2)
    assert [1.0] == seen
    assert 0.0 == in_use("dec_async")


def test_decorator_on_sync_methods() -> None:
    """Methods, classmethods and staticmethods keep their binding and are counted."""
    tracker = use("dec_method_sync", capacity=2)
    seen: list[float | None] = []

    class Repo:
        @tracker
        def get(self, key: str) -> str:
            seen.append(in_use("dec_method_sync"))
            return f"{type(self).__name__}:{key}"

        @tracker
        @classmethod
        def make(cls) -> str:
            seen.append(in_use("dec_method_sync"))
            return cls.__name__

        @tracker
        @staticmethod
        def static(x: int) -> int:
            seen.append(in_use("dec_method_sync"))
            return x

    assert ["Repo:k", "Repo", 7] == [Repo().get("k"), Repo.make(), Repo.static(7)]
    assert ["key"] == list(inspect.signature(Repo().get).parameters)
    assert [1.0, 1.0, 1.0] == seen
    assert 0.0 == in_use("dec_method_sync")


async def test_decorator_on_async_methods() -> None:
    """Async methods, classmethods and staticmethods stay coroutine functions and are counted."""
    tracker = use("dec_method_async", capacity=2)
    seen: list[float | None] = []

    class Repo:
        @tracker
        async def get(self, key: str) -> str:
            seen.append(in_use("dec_method_async"))
            return f"{type(self).__name__}:{key}"

        @tracker
        @classmethod
        async def make(cls) -> str:
            seen.append(in_use("dec_method_async"))
            return cls.__name__

        @tracker
        @staticmethod
        async def static(x: int) -> int:
            seen.append(in_use("dec_method_async"))
            return x

    assert inspect.iscoroutinefunction(Repo().get)
    assert inspect.iscoroutinefunction(Repo.make)
    assert ["Repo:k", "Repo", 7] == [await Repo().get("k"), await Repo.make(), await Repo.static(7)]
    assert ["key"] == list(inspect.signature(Repo().get).parameters)
    assert [1.0, 1.0, 1.0] == seen
    assert 0.0 == in_use("dec_method_async")


async def test_decorator_generators_hold_a_unit_until_exhausted_or_closed() -> None:
    """Generators and async generators hold their unit from first step to the end."""
    tracker = use("dec_gen", capacity=2)

    @tracker
    def rows() -> Iterator[int]:
        yield 1
        yield 2

    @tracker
    async def arows() -> AsyncGenerator[int, None]:
        yield 1
        yield 2

    gen = rows()
    assert 0 == tracker.in_use  # not started yet
    assert 1 == next(gen)
    assert 1.0 == in_use("dec_gen")
    assert [2] == list(gen)
    assert 0.0 == in_use("dec_gen")
    agen = arows()
    assert 1 == await agen.__anext__()
    assert 1.0 == in_use("dec_gen")
    await agen.aclose()
    assert 0.0 == in_use("dec_gen")
    assert inspect.isasyncgenfunction(arows)


async def test_decorator_generators_with_bad_arguments_raise_at_the_call() -> None:
    """A generator function called with bad arguments raises TypeError at the call, as
    undecorated, counts one error and leaves no unit held."""
    tracker = use("dec_gen_bad", capacity=2, errors=[TypeError])

    @tracker
    def rows(count: int) -> Iterator[int]:
        yield from range(count)

    @tracker
    async def arows(count: int) -> AsyncGenerator[int, None]:
        for index in range(count):
            yield index

    with pytest.raises(TypeError, match="count"):
        rows()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="count"):
        arows()  # type: ignore[call-arg]
    assert 0.0 == in_use("dec_gen_bad")
    assert 2.0 == errors("dec_gen_bad", "failure")
    assert [0] == list(rows(1))
    assert [0] == [row async for row in arows(1)]
    assert 2.0 == errors("dec_gen_bad", "failure")


async def test_decorated_callable_objects_and_partials_hold_a_unit_while_awaited() -> None:
    """A callable object whose ``__call__`` is a coroutine or an async generator, and a
    ``functools.partial`` of one, hold their unit until awaited or exhausted, as a coroutine
    function does. (A bug this test found, since fixed: the tracker looked only at the object
    itself, took it for a plain function and released the unit as soon as the coroutine was
    made.)"""
    tracker = use("dec_objects", capacity=4)
    seen: list[float | None] = []

    class Job:
        async def __call__(self, n: int) -> int:
            await asyncio.sleep(0)
            seen.append(in_use("dec_objects"))
            return n

    class Pages:
        async def __call__(self) -> AsyncGenerator[int, None]:
            seen.append(in_use("dec_objects"))
            yield 1

    assert 1 == await tracker(Job())(1)
    assert 2 == await tracker(functools.partial(Job(), 2))()
    assert [1] == [page async for page in tracker(Pages())()]
    assert [1.0, 1.0, 1.0] == seen
    assert 0.0 == in_use("dec_objects")


def test_recursion_counts_each_level_and_returns_to_zero() -> None:
    """Each recursive call is one unit; the count peaks at the depth and returns to 0."""
    tracker = use("recursive", capacity=10)
    peak: list[int] = []

    @tracker
    def depth(n: int) -> int:
        peak.append(tracker.in_use)
        return 0 if n == 0 else 1 + depth(n - 1)

    assert 5 == depth(5)
    assert 6 == max(peak)
    with tracker, tracker:
        assert 2.0 == in_use("recursive")
    assert 0.0 == in_use("recursive")


def test_import_time_decoration_before_configure_works() -> None:
    """A tracker declared and used to decorate at import time records once obskit runs."""
    obskit.configure(traces_exporter="none")
    assert 8 == import_time_query(4)
    assert 0.0 == in_use("import_time_db")
    assert 3.0 == sample("resource_capacity", "import_time_db")
    body, _ = render(None)
    assert b'resource_capacity{resource="import_time_db"} 3.0' in body


def test_values_survive_a_registry_reset() -> None:
    """After obskit.testing.reset() the fresh series start from the tracker's true counts."""
    from obskit import testing

    tracker = use("survives_reset", capacity=2)
    tracker.acquired()
    testing.reset()
    assert None is in_use("survives_reset")
    tracker.acquired()
    assert 2.0 == in_use("survives_reset")
    assert 1.0 == sample("resource_utilization_ratio", "survives_reset")
    tracker.released()
    tracker.released()
    assert 0.0 == in_use("survives_reset")


# -- context managers and errors ------------------------------------------------------------------
def test_context_manager_propagates_the_same_exception_without_counting_it() -> None:
    """An error inside `with tracker` reaches the caller unchanged and is not a resource error."""
    tracker = use("cm_sync", capacity=1)
    error = ValueError("bad input")
    inside: list[float | None] = []

    def handler() -> None:
        with tracker:
            inside.append(in_use("cm_sync"))
            raise error

    with pytest.raises(ValueError, match="bad input") as caught:
        handler()
    assert error is caught.value
    assert [1.0] == inside
    assert 0.0 == in_use("cm_sync")
    assert 0.0 == errors("cm_sync", "failure")


async def test_async_context_manager_counts_listed_errors() -> None:
    """With errors=..., exceptions of those types inside a unit count as failures (or timeouts)."""
    tracker = use("cm_async", capacity=1, errors=(ConnectionError, TimeoutError))

    async def run(exc: BaseException) -> None:
        async with tracker:
            assert 1.0 == in_use("cm_async")
            raise exc

    for exc in (ConnectionError("reset"), TimeoutError("slow"), KeyError("not counted")):
        with pytest.raises(type(exc)):
            await run(exc)
    assert 0.0 == in_use("cm_async")
    assert 1.0 == errors("cm_async", "failure")
    assert 1.0 == errors("cm_async", "timeout")


def test_waiting_counts_waiters_time_and_errors() -> None:
    """waiting() raises waiters while inside, observes every wait, and classifies failures."""
    tracker = use("waits", capacity=1, timeouts=(TimeoutError, LookupError))
    with tracker.waiting():
        assert 1.0 == waiters("waits")
        time.sleep(0.01)
    assert 0.0 == waiters("waits")
    assert 0.01 <= (sample("resource_wait_seconds_sum", "waits") or 0.0)
    for exc in (TimeoutError(), KeyError("a LookupError"), OSError("refused")):
        with pytest.raises(type(exc)), tracker.waiting():
            raise exc
    with pytest.raises(KeyboardInterrupt), tracker.waiting():
        raise KeyboardInterrupt  # not the resource's fault: not counted
    assert 2.0 == errors("waits", "timeout")
    assert 1.0 == errors("waits", "failure")
    assert 5.0 == wait_count("waits")
    assert 0.0 == waiters("waits")


async def test_async_waiting_and_cancellation() -> None:
    """`async with waiting()` undoes the waiter on cancellation without counting an error."""
    tracker = use("async_waits", capacity=1)
    sem = asyncio.Semaphore(0)

    async def blocked() -> None:
        async with tracker.waiting():
            await sem.acquire()

    task = asyncio.create_task(blocked())
    await asyncio.sleep(0.01)
    assert 1.0 == waiters("async_waits")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0.0 == waiters("async_waits")
    assert 0.0 == errors("async_waits", "failure")
    assert 1.0 == wait_count("async_waits")


def test_low_level_api_and_reasons() -> None:
    """acquired/released/set_capacity/error drive the gauges; unknown reasons fold to __other__."""
    tracker = use("low_level", capacity=4)
    tracker.acquired()
    tracker.acquired()
    assert 0.5 == sample("resource_utilization_ratio", "low_level")
    tracker.set_capacity(8)
    assert (8.0, 0.25) == (
        sample("resource_capacity", "low_level"),
        sample("resource_utilization_ratio", "low_level"),
    )
    tracker.released()
    tracker.released()
    tracker.error("timeout")
    tracker.error("disk on fire")
    assert 1.0 == errors("low_level", "timeout")
    assert 1.0 == errors("low_level", "__other__")
    assert (0, 0) == (tracker.in_use, tracker.waiters)


def test_same_name_returns_the_same_tracker_and_conflicts_are_refused() -> None:
    """use() twice with one name and settings is one tracker; other settings raise ValueError."""
    first = use("shared_name", capacity=2)
    assert first is use("shared_name", capacity=2)
    with pytest.raises(ValueError, match="already tracked"):
        use("shared_name", capacity=3)
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="capacity"):
            use("bad_capacity", capacity=bad)


def test_internal_failures_do_not_reach_user_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """If recording fails inside obskit, the call still runs and the failure is counted."""
    import obskit.metrics.use as use_module

    tracker = use("fail_open", capacity=1)

    def broken(name: str) -> Any:
        raise RuntimeError("registry gone")

    monkeypatch.setattr(use_module, "_declare", broken)
    monkeypatch.setattr(_state, "raise_internal_errors", False)

    @tracker
    def work() -> str:
        return "done"

    assert "done" == work()
    with tracker.waiting():
        pass
    assert 1 <= (get_sample_value("obskit_internal_errors_total", {"component": "use"}) or 0)
    assert (0, 0) == (tracker.in_use, tracker.waiters)


# -- concurrency ----------------------------------------------------------------------------------
def test_gauges_stay_exact_under_16_threads_and_200_tasks() -> None:
    """Hammered from threads and tasks at once behind real semaphores, in_use never passes the
    capacity and in_use/waiters return to exactly 0."""
    capacity = 8
    tracker = use("hammered", capacity=capacity)
    thread_sem = threading.BoundedSemaphore(capacity // 2)
    rounds = 200
    over_capacity: list[float] = []
    max_waiters = [0.0]

    def check() -> None:
        value = in_use("hammered") or 0.0
        if value > capacity or tracker.in_use > capacity:
            over_capacity.append(value)
        max_waiters[0] = max(max_waiters[0], waiters("hammered") or 0.0)

    def worker() -> None:
        for _ in range(rounds):
            with tracker.waiting():
                thread_sem.acquire()
            try:
                with tracker:
                    check()
                    time.sleep(0)
            finally:
                thread_sem.release()

    async def tasks() -> None:
        task_sem = asyncio.Semaphore(capacity // 2)

        async def one() -> None:
            for _ in range(5):
                async with tracker.waiting():
                    await task_sem.acquire()
                try:
                    async with tracker:
                        check()
                        await asyncio.sleep(0)
                finally:
                    task_sem.release()

        await asyncio.gather(*(one() for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join()
    assert [] == over_capacity
    assert (0.0, 0.0, 0.0) == (
        in_use("hammered"),
        waiters("hammered"),
        sample("resource_utilization_ratio", "hammered"),
    )
    assert float(16 * rounds + 200 * 5) == wait_count("hammered")
    assert 0.0 < max_waiters[0]


# -- executor and asyncio -------------------------------------------------------------------------
def test_executor_counts_running_and_queued_tasks() -> None:
    """Running tasks are in use, queued ones wait; both return to 0, task errors propagate."""
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as executor:
        tracker = instrument_executor(executor, name="workers")
        assert tracker is instrument_executor(executor)
        futures = [executor.submit(gate.wait, 5) for _ in range(6)]
        deadline = time.monotonic() + 5
        while tracker.in_use < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert (2.0, 4.0, 2.0) == (
            in_use("workers"),
            waiters("workers"),
            sample("resource_capacity", "workers"),
        )
        assert 1.0 == sample("resource_utilization_ratio", "workers")
        gate.set()
        assert [True] * 6 == [f.result() for f in futures]
        error = ZeroDivisionError("task bug")

        def boom() -> None:
            raise error

        with pytest.raises(ZeroDivisionError) as caught:
            executor.submit(boom).result()
        assert error is caught.value
        assert [2, 4, 6] == list(executor.map(lambda x: 2 * x, [1, 2, 3]))
    assert (0.0, 0.0) == (in_use("workers"), waiters("workers"))
    assert 10.0 == wait_count("workers")
    assert 0.0 == errors("workers", "failure")


def test_executor_cancelled_tasks_leave_the_queue() -> None:
    """A queued task that is cancelled stops waiting; a refused submit is not counted."""
    gate = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    instrument_executor(executor, name="cancelling")
    running = executor.submit(gate.wait, 5)
    queued = [executor.submit(gate.wait, 5) for _ in range(3)]
    assert 3.0 == waiters("cancelling")
    assert [True, True, True] == [f.cancel() for f in queued]
    assert 0.0 == waiters("cancelling")
    gate.set()
    assert running.result()
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(print)
    assert (0.0, 0.0) == (in_use("cancelling"), waiters("cancelling"))


def test_executor_refuses_process_pools() -> None:
    """Only thread pools can be instrumented: a process pool's tasks run elsewhere."""
    from concurrent.futures import ProcessPoolExecutor

    with pytest.raises(TypeError):
        instrument_executor(ProcessPoolExecutor(max_workers=1))  # type: ignore[arg-type]


async def test_asyncio_queue_size_and_blocked_producers() -> None:
    """Queue size is the utilization, producers blocked on a full queue are the saturation."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
    tracker = instrument_asyncio_queue(queue, name="jobs")
    assert tracker is instrument_asyncio_queue(queue)
    await queue.put(1)
    queue.put_nowait(2)
    assert (2.0, 1.0) == (in_use("jobs"), sample("resource_utilization_ratio", "jobs"))
    producer = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0.01)
    assert 1.0 == waiters("jobs")
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(4)
    assert 1.0 == errors("jobs", "failure")
    assert 1 == await queue.get()
    await producer
    assert (0.0, 2.0) == (waiters("jobs"), in_use("jobs"))
    assert [2, 3] == [queue.get_nowait(), await queue.get()]
    assert 0.0 == in_use("jobs")
    assert 2.0 == wait_count("jobs")
    assert 0.01 <= (sample("resource_wait_seconds_sum", "jobs") or 0.0)


async def test_asyncio_semaphore_holders_and_waiters() -> None:
    """Holders of a semaphore are in use; tasks blocked in acquire() are waiters."""
    sem = asyncio.Semaphore(2)
    instrument_asyncio_semaphore(sem, 2, name="limiter")
    gate = asyncio.Event()

    async def hold() -> None:
        async with sem:
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert (2.0, 3.0, 1.0) == (
        in_use("limiter"),
        waiters("limiter"),
        sample("resource_utilization_ratio", "limiter"),
    )
    gate.set()
    await asyncio.gather(*tasks)
    assert (0.0, 0.0) == (in_use("limiter"), waiters("limiter"))
    assert 5.0 == wait_count("limiter")


# -- runtime --------------------------------------------------------------------------------------
def test_runtime_collector_values_are_sane() -> None:
    """CPU, memory, fds, threads and GC (counts and pauses) are read at scrape time."""
    collector = instrument_runtime()
    try:
        assert collector is instrument_runtime()
        before = get_sample_value("obskit_runtime_gc_collections_total", {"generation": "2"})
        pauses_before = get_sample_value(
            "obskit_runtime_gc_pause_seconds_count", {"generation": "2"}
        )
        sum(i * i for i in range(200_000))  # some CPU
        gc.collect()
        cpu = get_sample_value("obskit_runtime_cpu_seconds_total") or 0.0
        rss = get_sample_value("obskit_runtime_resident_memory_bytes") or 0.0
        fds = get_sample_value("obskit_runtime_open_fds") or 0.0
        max_fds = get_sample_value("obskit_runtime_max_fds") or 0.0
        threads = get_sample_value("obskit_runtime_threads") or 0.0
        assert 0.0 < cpu < time.process_time() + 1
        assert 10_000_000 < rss < 100_000_000_000
        assert 3 <= fds <= max_fds
        assert 1 <= threads < 10_000
        assert (before or 0.0) + 1 <= (
            get_sample_value("obskit_runtime_gc_collections_total", {"generation": "2"}) or 0.0
        )
        assert (pauses_before or 0.0) + 1 <= (
            get_sample_value("obskit_runtime_gc_pause_seconds_count", {"generation": "2"}) or 0.0
        )
        assert 0.0 < (
            get_sample_value("obskit_runtime_gc_pause_seconds_sum", {"generation": "2"}) or 0.0
        )
        body, _ = render(None)
        assert b"obskit_runtime_threads " in body
        assert 1 == body.count(b"# TYPE process_cpu_seconds_total counter")
    finally:
        uninstrument_runtime()
    assert None is get_sample_value("obskit_runtime_threads")


async def test_loop_lag_monitor_sees_a_blocking_call() -> None:
    """A time.sleep(0.2) inside the loop shows up as ~0.2 s of event-loop lag."""
    monitor = start_loop_lag_monitor(interval=0.01, name="test")
    await asyncio.sleep(0.05)
    assert monitor.max_lag < 0.1
    time.sleep(0.2)  # the bug being detected: a blocking call on the loop
    await asyncio.sleep(0.05)
    assert 0.0 <= (get_sample_value("asyncio_event_loop_lag_seconds", {"loop": "test"}) or -1)
    monitor.stop()
    monitor.stop()
    await asyncio.sleep(0)  # the cancelled task ends
    assert 0.15 <= monitor.max_lag
    count = get_sample_value("asyncio_event_loop_lateness_seconds_count", {"loop": "test"}) or 0
    under_100ms = get_sample_value(
        "asyncio_event_loop_lateness_seconds_bucket", {"loop": "test", "le": "0.1"}
    )
    assert 1 <= count - (under_100ms or 0)
    # A stopped monitor's gauge is gone (no stale saturation); its histogram stays.
    assert None is get_sample_value("asyncio_event_loop_lag_seconds", {"loop": "test"})


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan"), float("inf")])
def test_loop_lag_monitor_refuses_an_interval_that_is_not_a_positive_number(
    interval: float,
) -> None:
    """A NaN interval would corrupt the loop's timer heap: refused like zero or a negative."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="interval"):
            start_loop_lag_monitor(loop, interval=interval, name="bad")
    finally:
        loop.close()


def test_loop_lag_monitor_needs_a_loop_and_works_from_another_thread() -> None:
    """Outside a loop, loop= is required; given one, the monitor starts once the loop runs."""
    with pytest.raises(RuntimeError, match="loop="):
        start_loop_lag_monitor()
    loop = asyncio.new_event_loop()
    try:
        monitor = start_loop_lag_monitor(loop, interval=0.01, name="other")
        loop.run_until_complete(asyncio.sleep(0.05))
        monitor.stop()
        loop.run_until_complete(asyncio.sleep(0.02))
    finally:
        loop.close()
    assert 1 <= (
        get_sample_value("asyncio_event_loop_lateness_seconds_count", {"loop": "other"}) or 0
    )


def test_tracker_is_exported_type() -> None:
    """use() returns a UseTracker with the name and kind given."""
    tracker = use("typed", capacity=1, kind="pool")
    assert isinstance(tracker, UseTracker)
    assert ("typed", "pool", 1) == (tracker.name, tracker.kind, tracker.capacity)
