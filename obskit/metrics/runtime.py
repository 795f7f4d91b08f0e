"""Process saturation: CPU, memory, file descriptors, threads, GC pauses and event-loop lag.

::

    from obskit.metrics.runtime import instrument_runtime, start_loop_lag_monitor

    instrument_runtime()   # configure() does it (runtime_metrics=True, the default); for
                           # another registry, or after configure(runtime_metrics=False)

    async def main():
        lag = start_loop_lag_monitor(interval=0.5)
        ...
        lag.stop()

**Names.** prometheus_client's default registry already carries a ``ProcessCollector``
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``,
``process_max_fds`` -- Linux only, read from ``/proc``) and a ``GCCollector``
(``python_gc_collections_total{generation}``), and obskit's ``/metrics`` includes that registry by
default. obskit's exposition keeps the first of two metrics with one name and drops the other
silently, so reusing those names would hide one source behind the other depending on
configuration. The runtime collector therefore uses its own prefix, ``obskit_runtime_``, and adds
what the defaults lack (threads, GC *pause time*, works without ``/proc`` through psutil);
dashboards built on the standard names keep working beside it.

=============================================  =========  ============================
``obskit_runtime_cpu_seconds_total``           counter    user + system CPU time
``obskit_runtime_resident_memory_bytes``       gauge      RSS (psutil or /proc)
``obskit_runtime_open_fds``                    gauge      open file descriptors
``obskit_runtime_max_fds``                     gauge      their soft limit
``obskit_runtime_threads``                     gauge      OS threads of the process
``obskit_runtime_gc_collections_total``        counter    collections, by generation
``obskit_runtime_gc_collected_objects_total``  counter    objects freed, by generation
``obskit_runtime_gc_pause_seconds``            histogram  each collection's duration
``asyncio_event_loop_lag_seconds``             gauge      latest lateness, by loop
``asyncio_event_loop_lateness_seconds``        histogram  every lateness, by loop
=============================================  =========  ============================

Everything except the loop lag is read when ``/metrics`` is scraped, by a collector registered in
obskit's registry: no polling thread. GC pauses are timed by a ``gc.callbacks`` hook (two clock
reads per collection). The loop-lag metrics are ordinary obskit instruments, written by a small task
on the loop. Under gunicorn's multi-process mode only the loop-lag metrics are served (a
collector reads one process, and a scrape reaches any worker): docs/use.md says what to use.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import math
import os
import sys
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from obskit import _selfmetrics, _state

__all__ = [
    "GC_PAUSE_BUCKETS",
    "LAG_BUCKETS",
    "LoopLagMonitor",
    "RuntimeCollector",
    "instrument_runtime",
    "start_loop_lag_monitor",
    "uninstrument_runtime",
]

#: Upper bounds (seconds) of ``obskit_runtime_gc_pause_seconds``: a young collection takes tens of
#: microseconds, a full one on a large heap can take a second.
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Upper bounds (seconds) of ``asyncio_event_loop_lateness_seconds``.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_perf = time.perf_counter


class _GcPauses:
    """The ``gc.callbacks`` hook timing each collection, per generation.

    The callback runs inside the collector, possibly in any thread, and must neither take a lock
    (the thread it interrupts may hold it) nor raise. Collections never overlap, so there is one
    writer: it replaces a per-generation tuple ``(bucket counts, sum)`` in one assignment, and a
    scrape reading that tuple always sees a consistent histogram.
    """

    def __init__(self, bounds: tuple[float, ...] = GC_PAUSE_BUCKETS) -> None:
        self.bounds = bounds
        empty = (0,) * (len(bounds) + 1)
        self.data: list[tuple[tuple[int, ...], float]] = [(empty, 0.0)] * 3
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        try:
            if phase == "start":
                self._started = _perf()
                return
            started = self._started
            if started is None:
                return
            self._started = None
            elapsed = _perf() - started
            generation = min(max(int(info.get("generation", 2)), 0), 2)
            counts, total = self.data[generation]
            index = bisect_left(self.bounds, elapsed)  # first bound >= elapsed; len: +Inf
            updated = list(counts)
            updated[index] += 1
            self.data[generation] = (tuple(updated), total + elapsed)
        except Exception:  # a gc callback must never raise, and cannot count safely (locks)
            pass


# gc.callbacks is process-wide: one hook for the process, shared by every collector.
_gc_pauses: _GcPauses | None = None
#: ``gc.get_stats()`` when this process was forked (None: not forked): a worker counts its own
#: collections, not the ones it inherited from its parent (a gunicorn master under --preload),
#: which each worker's OTLP push would otherwise send again.
_gc_baseline: list[dict[str, Any]] | None = None


def _start_counting_at_fork() -> None:
    # No lock here: a fork hook runs in the child's only thread, before anything else.
    global _gc_baseline
    _gc_baseline = gc.get_stats()
    pauses = _gc_pauses
    if pauses is not None:
        empty = (0,) * (len(pauses.bounds) + 1)
        pauses.data = [(empty, 0.0)] * 3


os.register_at_fork(after_in_child=_start_counting_at_fork)
_gc_lock = threading.Lock()
# The collector registered in each registry (``obskit.testing.reset()`` makes a new registry).
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, RuntimeCollector] = (
    weakref.WeakKeyDictionary()
)


def _gc_hook() -> _GcPauses:
    global _gc_pauses
    with _gc_lock:
        if _gc_pauses is None:
            _gc_pauses = _GcPauses()
            gc.callbacks.append(_gc_pauses)
        return _gc_pauses


class RuntimeCollector(Collector):
    """A prometheus collector reading the process's saturation signals at scrape time."""

    def __init__(self) -> None:
        self.gc_pauses = _gc_hook()
        self._pid = -1
        self._process: Any = None
        self._psutil_missing = False

    def _proc(self) -> Any:
        """A psutil Process for this pid (re-made after fork), or None without psutil."""
        if self._psutil_missing:
            return None
        pid = os.getpid()
        if self._process is None or self._pid != pid:
            try:
                # Imported by name: psutil is optional and ships no type stubs.
                psutil = importlib.import_module("psutil")
            except ImportError:
                self._psutil_missing = True
                return None
            self._process = psutil.Process(pid)
            self._pid = pid
        return self._process

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the process (registration is cheap)."""
        return self._families(sample=False)

    def collect(self) -> Iterable[Metric]:
        """Read the process now."""
        try:
            return self._families(sample=True)
        except Exception as internal:
            _selfmetrics.internal_error("runtime", internal)
            return []

    def _families(self, sample: bool) -> list[Metric]:
        cpu = CounterMetricFamily(
            "obskit_runtime_cpu_seconds", "User and system CPU time of the process, in seconds."
        )
        rss = GaugeMetricFamily(
            "obskit_runtime_resident_memory_bytes", "Resident set size of the process, in bytes."
        )
        fds = GaugeMetricFamily("obskit_runtime_open_fds", "Open file descriptors.")
        max_fds = GaugeMetricFamily(
            "obskit_runtime_max_fds", "Soft limit on open file descriptors (RLIMIT_NOFILE)."
        )
        threads = GaugeMetricFamily("obskit_runtime_threads", "OS threads of the process.")
        collections = CounterMetricFamily(
            "obskit_runtime_gc_collections",
            "Garbage collections, per generation.",
            labels=["generation"],
        )
        collected = CounterMetricFamily(
            "obskit_runtime_gc_collected_objects",
            "Objects freed by the garbage collector, per generation.",
            labels=["generation"],
        )
        pauses = HistogramMetricFamily(
            "obskit_runtime_gc_pause_seconds",
            "Time each garbage collection took (the process is paused), in seconds.",
            labels=["generation"],
        )
        families: list[Metric] = [cpu, rss, fds, max_fds, threads, collections, collected, pauses]
        if not sample:
            return families

        # time.process_time() is the process's user+system CPU time (all threads), portable and
        # cheaper than psutil.
        cpu.add_metric([], time.process_time())
        rss_value = fd_value = thread_value = None
        proc = _guarded(self._proc)
        if proc is not None:
            with proc.oneshot():
                # Each value on its own: one psutil may not read (AccessDenied) costs only itself.
                rss_value = _guarded(lambda: proc.memory_info().rss)
                thread_value = _guarded(proc.num_threads)
                if hasattr(proc, "num_fds"):  # POSIX only
                    fd_value = _guarded(proc.num_fds)
        else:
            rss_value, thread_value, fd_value = _from_proc()
        if rss_value is not None:
            rss.add_metric([], rss_value)
        if fd_value is not None:
            fds.add_metric([], fd_value)
        if thread_value is None:
            thread_value = threading.active_count()  # Python threads only: the best left
        threads.add_metric([], thread_value)
        limit = _fd_limit()
        if limit is not None:
            max_fds.add_metric([], limit)

        baseline = _gc_baseline
        for generation, stats in enumerate(gc.get_stats()):
            label = [str(generation)]
            before = baseline[generation] if baseline else {}
            collections.add_metric(
                label, stats.get("collections", 0) - before.get("collections", 0)
            )
            collected.add_metric(label, stats.get("collected", 0) - before.get("collected", 0))
        bounds = self.gc_pauses.bounds
        for generation, (counts, total) in enumerate(list(self.gc_pauses.data)):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            pauses.add_metric([str(generation)], buckets, total)
        return families


def _guarded(read: Any) -> Any:
    """``read()``, or None (counted) when it raises."""
    try:
        return read()
    except Exception as internal:
        _selfmetrics.internal_error("runtime", internal)
        return None


def _from_proc() -> tuple[int | None, int | None, int | None]:
    """RSS, threads and open fds from ``/proc`` (Linux) when psutil is not installed."""
    rss = threads = fds = None
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Threads:"):
                    threads = int(line.split()[1])
                    break
        fds = len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened
    except OSError:
        pass
    return rss, threads, fds


def _fd_limit() -> int | None:
    if sys.platform == "win32":
        return None
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def instrument_runtime(registry: CollectorRegistry | None = None) -> RuntimeCollector:
    """Register the runtime collector in obskit's registry (or ``registry``); idempotent.

    Returns:
        The collector (call :func:`uninstrument_runtime` to remove it).
    """
    target = _state.registry if registry is None else registry
    with _gc_lock:
        collector = _collectors.get(target)
    if collector is not None:
        return collector
    collector = RuntimeCollector()
    target.register(collector)
    with _gc_lock:
        _collectors[target] = collector
    return collector


def uninstrument_runtime(registry: CollectorRegistry | None = None) -> None:
    """Remove the runtime collector from obskit's registry (or ``registry``)."""
    target = _state.registry if registry is None else registry
    with _gc_lock:
        collector = _collectors.pop(target, None)
    if collector is not None:
        target.unregister(collector)


# -- event-loop lag ------------------------------------------------------------------------------
class LoopLagMonitor:
    """A task on one event loop measuring how late its wake-ups are; made by
    :func:`start_loop_lag_monitor`.

    Every ``interval`` it sleeps, then records how much later than asked it woke up: the time
    callbacks ahead of it ran without yielding -- the loop's saturation. The latest value is
    ``asyncio_event_loop_lag_seconds{loop}``, every value goes into
    ``asyncio_event_loop_lateness_seconds{loop}`` (a scrape every 15 s would miss a spike that
    the gauge alone shows only until the next wake-up). When the monitor ends (``stop()``, its
    loop closed) the gauge's series is removed; the histogram stays.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, name: str) -> None:
        if not 0 < interval < math.inf:  # NaN fails too: it would corrupt the loop's timers
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.loop = loop
        self.interval = interval
        self.name = name
        #: The latest lateness measured, in seconds.
        self.last_lag = 0.0
        #: The largest lateness measured since the start, in seconds.
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._instruments_of: tuple[int, Any, Any] | None = None

    def _instruments(self) -> tuple[Any, Any]:
        instruments = self._instruments_of
        if instruments is None or instruments[0] != _state.generation:
            from obskit.metrics.instruments import gauge, histogram

            lag = gauge(
                "asyncio_event_loop_lag_seconds",
                "How late the event loop ran a timer at its latest check, in seconds.",
                ["loop"],
                multiprocess_mode="livemax",
            )
            lateness = histogram(
                "asyncio_event_loop_lateness_seconds",
                "How late the event loop ran a timer, every check, in seconds.",
                ["loop"],
                buckets=LAG_BUCKETS,
            )
            instruments = self._instruments_of = (_state.generation, lag, lateness)
        return instruments[1], instruments[2]

    def _record(self, lag: float) -> None:
        self.last_lag = lag
        if lag > self.max_lag:
            self.max_lag = lag
        try:
            # Children looked up at every check (twice a second), not kept: a monitor of the
            # same name that ended removes the gauge's series, and this one brings it back.
            gauge, histogram = self._instruments()
            gauge.labels(self.name).set(lag)
            histogram.labels(self.name).observe(lag)
        except Exception as internal:
            _selfmetrics.internal_error("loop_lag", internal)

    def _forget(self) -> None:
        # A closed or stopped loop has no lag: a gauge kept at its last value would show a
        # stale saturation forever. The lateness histogram is cumulative and stays.
        _active.discard(self)
        try:
            gauge, _ = self._instruments()
            child, folded = gauge.kept(self.name)
            if not folded:  # the overflow series is other loops' too: left as it is
                child.set(0.0)  # what a multi-process file keeps until exit
                gauge.remove(self.name)
        except Exception as internal:
            _selfmetrics.internal_error("loop_lag", internal)

    async def _run(self) -> None:
        loop = self.loop
        interval = self.interval
        try:
            while not self._stopped:
                started = loop.time()
                await asyncio.sleep(interval)
                # asyncio may run a timer up to one clock resolution early: clamp at zero.
                self._record(max(0.0, loop.time() - started - interval))
        finally:
            self._forget()

    def _start(self) -> None:
        if not self._stopped and self._task is None:
            self._task = self.loop.create_task(self._run(), name=f"obskit-loop-lag-{self.name}")
            _active.add(self)

    def stop(self) -> None:
        """Stop measuring; safe from any thread, and more than once."""
        self._stopped = True
        task = self._task
        if task is None or task.done():
            return
        if _running_loop() is self.loop:
            task.cancel()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)
        else:  # closed with the task pending: its finally never runs, so forget here
            self._forget()


#: Monitors whose task runs: a loop closed with it still pending (``run_until_complete`` then
#: ``close()``) never runs its ``finally``, so each scrape looks for those (forget_closed_loops).
_active: set[LoopLagMonitor] = set()


def forget_closed_loops() -> None:
    """Remove the lag gauge of monitors whose loop was closed without stopping them."""
    for monitor in list(_active):
        if monitor.loop.is_closed():
            monitor._stopped = True
            monitor._forget()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def start_loop_lag_monitor(
    loop: asyncio.AbstractEventLoop | None = None, interval: float = 0.5, *, name: str = "main"
) -> LoopLagMonitor:
    """Measure the lag of ``loop`` (default: the running loop) every ``interval`` seconds.

    Callable from the loop itself or from another thread (the task is then created on the loop
    thread-safely, once the loop runs).

    Args:
        loop: the loop to watch; required when no loop is running in this thread.
        interval: seconds between checks; lag shorter than the loop's clock resolution is 0.
        name: the ``loop`` label, to tell several loops apart.

    Raises:
        RuntimeError: no ``loop`` given and none running in this thread.
    """
    forget_closed_loops()
    running = _running_loop()
    if loop is None:
        if running is None:
            raise RuntimeError("start_loop_lag_monitor() needs loop= outside a running loop")
        loop = running
    monitor = LoopLagMonitor(loop, interval, name)
    if running is loop:
        monitor._start()
    else:
        loop.call_soon_threadsafe(monitor._start)
    return monitor
