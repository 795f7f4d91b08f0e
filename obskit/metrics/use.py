"""USE metrics -- Utilization, Saturation, Errors -- for one resource: a pool, a queue, workers.

::

    from obskit.metrics.use import use

    db = use("db", capacity=10)

    with db.waiting():              # saturation: callers waiting to acquire, and for how long
        conn = pool.acquire()
    with db:                        # utilization: units in use, against the capacity
        run(conn)

    @db                             # or decorate whatever holds one unit while it runs
    async def query(sql): ...

Metrics (label ``resource`` = the tracker's name), all declared through
:mod:`obskit.metrics.instruments`, so they sit behind the cardinality guard and survive
``obskit.testing.reset()``:

====================================  =========  ==============================================
``resource_in_use``                   gauge      units in use now
``resource_capacity``                 gauge      units available in total (0 when unknown)
``resource_utilization_ratio``        gauge      in use / capacity (0 when capacity unknown)
``resource_waiters``                  gauge      callers waiting to acquire a unit (saturation)
``resource_wait_seconds``             histogram  time spent waiting to acquire (every wait)
``resource_errors_total{reason}``     counter    ``timeout`` (gave up waiting) or ``failure``
====================================  =========  ==============================================

Design choices, each for a reason:

- **Exact gauges.** The tracker keeps its own counts under one lock and *sets* the gauges from them
  inside that lock, so concurrent updates are serialised in count order: a scrape always reads a
  value the count really had (never a torn ``in_use`` / ``utilization`` pair), and balanced
  acquire/release calls bring the gauges back to exactly 0 whatever the interleaving of threads
  and tasks. Values are pushed when they change (no polling thread, no scrape-time callback), which
  is also what makes them work under gunicorn's multi-process mode, where only values written by
  the metric objects reach ``/metrics``.
- **Multi-process modes.** ``in_use``, ``capacity`` and ``waiters`` are summed over live workers
  (each worker has its own pool); ``utilization_ratio`` takes the *maximum* over live workers --
  a sum of ratios means nothing, and the saturated worker is the one to see. The fleet-wide ratio is
  ``sum(resource_in_use) / sum(resource_capacity)``.
- **What counts as an error.** Anything except cancellation that escapes :meth:`UseTracker.waiting`
  is a resource error: a ``timeouts`` type counts ``reason="timeout"``, anything else (connection
  refused, pool closed) ``reason="failure"``. An exception raised *while a unit is in use*
  (``with tracker:`` or the decorator) is the caller's business -- a ``ValueError`` in a handler
  that holds a connection says nothing about the pool -- so it is **not** counted unless it is an
  instance of the ``errors`` types given to :func:`use` (RED metrics, ``@obskit.red``, already
  count the caller's errors). Either way the exception reaches the caller unchanged.
- **Nesting.** Each ``with tracker:`` (each call of a decorated function, recursive calls
  included) is one unit of use; nesting and recursion raise and lower the count symmetrically.
- **Fail open.** A failure inside obskit while recording is counted in
  ``obskit_internal_errors_total{component="use"}`` and never reaches the caller.
- **Declared lazily.** The metrics are created on first use (or at :func:`use` when obskit is
  already configured), so ``use(...)`` at import time, before ``configure()``, is fine.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import math
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from obskit import _selfmetrics, _shapes, _state
from obskit.metrics._direct import Observer, adder, setter

__all__ = ["DEFAULT_TIMEOUTS", "REASONS", "UseTracker", "Wait", "tracked_names", "use"]

F = TypeVar("F", bound=Callable[..., Any])
#: What ``timeouts=``/``errors=`` take: an exception type, or a tuple, list or any iterable of them.
ExceptionTypes = type[BaseException] | Iterable[type[BaseException]]

#: Exceptions that mean "gave up waiting" (distinct classes on Python 3.10, one class since 3.11).
DEFAULT_TIMEOUTS: tuple[type[BaseException], ...] = tuple(
    dict.fromkeys((TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError))
)
#: The ``reason`` values of ``resource_errors_total``; any other value is recorded as ``__other__``.
REASONS = ("timeout", "failure")

#: Upper bounds (seconds) of ``resource_wait_seconds``: from an uncontended pool (sub-ms) up to
#: SQLAlchemy's default 30 s pool timeout.
WAIT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_perf = time.perf_counter

# Trackers by name, so that ``use("db")`` twice gives one tracker (two trackers setting the same
# gauge series would overwrite each other's counts). Weak: a tracker whose pool is gone goes too.
# Trackers are declarations, like ``_state.instruments``: ``obskit.testing.reset()`` keeps them.
_trackers: weakref.WeakValueDictionary[str, UseTracker] = weakref.WeakValueDictionary()


class _Children(NamedTuple):
    """Direct writers (:mod:`obskit.metrics._direct`) of one tracker's series. Gauges are given
    floats, as ``Gauge.set`` would store them."""

    generation: int
    in_use: Callable[[float], None]
    capacity: Callable[[float], None]
    utilization: Callable[[float], None]
    waiters: Callable[[float], None]
    wait: Callable[[float], None]
    timeout: Callable[[float], None]
    failure: Callable[[float], None]
    errors: Any  # the instrument itself, for reasons other than the two above


# Trackers past a resource_* metric's series limit share its ``__overflow__`` series. Gauges there
# hold what the folded trackers hold together: each adds the change of its own value, and the
# ratio is the totals' (reset with obskit, when every tracker publishes its values again).
_folded_lock = threading.Lock()
_folded: dict[str, float] = {"generation": -1.0, "in_use": 0.0, "capacity": 0.0, "waiters": 0.0}


def _folded_total(key: str, delta: float) -> float:
    """Add ``delta`` to a folded total; the caller holds ``_folded_lock``."""
    if _folded["generation"] != _state.generation:
        _folded.update(generation=float(_state.generation), in_use=0.0, capacity=0.0, waiters=0.0)
    total = _folded[key] = _folded[key] + delta
    return total


class _FoldedGauge:
    """Writes one tracker's ``in_use``/``capacity``/``waiters`` into an overflow series as a
    change, so the series holds the folded trackers' total."""

    __slots__ = ("_key", "_last", "_set")

    def __init__(self, set_total: Callable[[float], None], key: str) -> None:
        self._set = set_total
        self._key = key
        self._last = 0.0

    def __call__(self, value: float) -> None:
        with _folded_lock:
            total = _folded_total(self._key, value - self._last)
            self._last = value
            self._set(total)


def _folded_ratio(set_ratio: Callable[[float], None]) -> Callable[[float], None]:
    """The overflow series' utilization: folded in use over folded capacity."""

    def write(value: float) -> None:
        with _folded_lock:
            capacity = _folded_total("capacity", 0.0)
            set_ratio(_ratio(_folded_total("in_use", 0.0), capacity))

    return write


def _instruments() -> tuple[Any, Any, Any, Any, Any, Any]:
    """The resource_* instruments (declared on first use, the same objects after)."""
    from obskit.metrics.instruments import counter, gauge, histogram

    label = ["resource"]
    in_use = gauge("resource_in_use", "Units of the resource in use.", label)
    capacity = gauge("resource_capacity", "Units of the resource available in total.", label)
    utilization = gauge(
        "resource_utilization_ratio",
        "Units in use divided by capacity (0..1).",
        label,
        multiprocess_mode="livemax",
    )
    waiters = gauge(
        "resource_waiters", "Callers waiting to acquire a unit of the resource (saturation).", label
    )
    wait = histogram(
        "resource_wait_seconds",
        "Time callers spent waiting to acquire a unit of the resource, in seconds.",
        label,
        buckets=WAIT_BUCKETS,
    )
    errors = counter(
        "resource_errors",
        "Errors of the resource, by reason: timeout (gave up waiting) or failure.",
        ["resource", "reason"],
        rules={"reason": REASONS},
    )
    return in_use, capacity, utilization, waiters, wait, errors


def _ratio(in_use: float, capacity: float) -> float:
    """``resource_utilization_ratio``: units in use over the capacity; 0 for a capacity of 0."""
    return in_use / capacity if capacity else 0.0


def _declare(name: str) -> _Children:
    from obskit.metrics.instruments import counting

    in_use, capacity, utilization, waiters, wait, errors = _instruments()

    # Kept children are written directly; a write to an overflow series (this tracker is past
    # a metric's series limit) is counted as one folded observation.
    def level(instrument: Any, key: str) -> Callable[[float], None]:
        child, folded = instrument.kept(name)
        write = _FoldedGauge(setter(child), key) if folded else setter(child)
        return counting(instrument, folded, write)

    def count(reason: str) -> Callable[[float], None]:
        child, folded = errors.kept(name, reason)
        return counting(errors, folded, adder(child))

    ratio, ratio_folded = utilization.kept(name)
    observed, observed_folded = wait.kept(name)
    return _Children(
        _state.generation,
        level(in_use, "in_use"),
        level(capacity, "capacity"),
        counting(
            utilization,
            ratio_folded,
            _folded_ratio(setter(ratio)) if ratio_folded else setter(ratio),
        ),
        level(waiters, "waiters"),
        counting(wait, observed_folded, Observer(observed)),
        count("timeout"),
        count("failure"),
        errors,
    )


def _types(spec: Any) -> tuple[type[BaseException], ...]:
    """``spec`` as the tuple ``isinstance`` takes; a list, set or other iterable of types is
    taken too, and anything else is refused here, at declaration, not at the first exception
    (where it would turn the application's exception into a TypeError)."""
    if spec is None:
        return ()
    several = isinstance(spec, Iterable) and not isinstance(spec, (type, str))
    types = tuple(spec) if several else (spec,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError(f"expected exception types, got {spec!r}")
    return types


class Wait:
    """One caller waiting to acquire a unit: made by :meth:`UseTracker.waiting`.

    Use it as a (sync or async) context manager around the blocking acquire, or -- when the wait
    does not fit one block, as with an executor's queue -- call :meth:`begin` and later :meth:`end`
    (or :meth:`abandon`). Ending twice is harmless: only the first end counts.
    """

    __slots__ = ("_open", "_started", "_tracker")

    def __init__(self, tracker: UseTracker) -> None:
        self._tracker = tracker
        self._open = False
        self._started = 0.0

    def begin(self) -> Wait:
        """Start waiting: ``resource_waiters`` +1 and the wait clock starts."""
        self._tracker._wait_begin(self)
        return self

    def end(self, exc: BaseException | None = None) -> bool:
        """Stop waiting: waiters -1, the wait time observed, ``exc`` (if any) counted as an error.

        Returns:
            Whether this call ended the wait (False when it had already ended).
        """
        return self._tracker._wait_end(self, exc, observe=True)

    def abandon(self) -> bool:
        """Stop waiting without observing the time or counting an error (the wait never was)."""
        return self._tracker._wait_end(self, None, observe=False)

    def __enter__(self) -> Wait:
        return self.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)

    async def __aenter__(self) -> Wait:
        return self.begin()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)


class UseTracker:
    """USE metrics of one resource; made by :func:`use`.

    Works as a decorator (sync, async, generator and async-generator functions and methods: one
    unit is in use while the call runs), as a context manager and an async context manager around
    one unit of use, and offers the low-level calls integrations need: :meth:`waiting`,
    :meth:`acquired`, :meth:`released`, :meth:`set_in_use`, :meth:`error` and
    :meth:`set_capacity`.
    """

    __slots__ = (
        "__weakref__",
        "_capacity",
        "_children",
        "_closed",
        "_errors",
        "_holders",
        "_in_use",
        "_lock",
        "_settings",
        "_timeouts",
        "_waiters",
        "kind",
        "name",
    )

    def __init__(
        self,
        name: str,
        capacity: float | None = None,
        *,
        kind: str = "resource",
        timeouts: ExceptionTypes = DEFAULT_TIMEOUTS,
        errors: ExceptionTypes = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self._timeouts = _types(timeouts)
        self._errors = _types(errors)
        self._capacity = _check_capacity(capacity)
        self._settings = (self._capacity, kind, self._timeouts, self._errors)
        self._in_use = 0
        self._waiters = 0
        # Re-entrant: a refresh of the metric children (after a reset) publishes every value
        # while a caller that already holds the lock is updating one.
        self._lock = threading.RLock()
        self._children: _Children | None = None
        #: Live resources (pools, executors, queues) reporting through this tracker.
        self._holders = 0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<UseTracker {self.name!r} kind={self.kind!r} in_use={self._in_use} "
            f"capacity={self._capacity} waiters={self._waiters}>"
        )

    # -- introspection ------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        """Units in use now (the tracker's own exact count)."""
        return self._in_use

    @property
    def waiters(self) -> int:
        """Callers waiting now (the tracker's own exact count)."""
        return self._waiters

    @property
    def capacity(self) -> float | None:
        """The current capacity, or None when unknown (unbounded)."""
        return self._capacity

    # -- metric plumbing ------------------------------------------------------------------------
    def _kids(self) -> _Children:
        children = self._children
        if children is None or children.generation != _state.generation:
            with self._lock:
                children = self._children
                if self._closed:  # its resource is gone: nothing it says is published
                    return _INERT
                if children is None or children.generation != _state.generation:
                    # First use, or obskit was reset (fresh registry): declare and publish every
                    # value the tracker holds, so the new series start from the true counts.
                    children = _declare(self.name)
                    self._children = children
                    self._publish_all(children)
        return children

    def _publish_all(self, kids: _Children) -> None:
        kids.in_use(float(self._in_use))
        kids.waiters(float(self._waiters))
        capacity = self._capacity
        if capacity is not None:
            kids.capacity(float(capacity))
            kids.utilization(_ratio(self._in_use, capacity))

    def _publish_in_use(self) -> None:
        """Push ``in_use`` and the utilization; the caller holds ``_lock``."""
        try:
            kids = self._kids()
            in_use = self._in_use
            kids.in_use(float(in_use))
            capacity = self._capacity
            if capacity is not None:
                kids.utilization(_ratio(in_use, capacity))
        except Exception as internal:
            _selfmetrics.internal_error("use", internal)

    def publish(self) -> None:
        """Declare the metrics now and publish the current values (capacity included)."""
        try:
            with self._lock:
                kids = self._kids()
                self._publish_all(kids)
        except Exception as internal:
            _selfmetrics.internal_error("use", internal)

    def close(self) -> None:
        """The resource is gone: its gauges go to 0 and its ``resource_*`` series are removed
        (the next scrape no longer shows them; under multi-process metrics they stay at 0 until
        the worker exits), and its name is free for a new resource (``use(name)`` makes a new
        tracker). The instrumentation of pools, executors and queues calls this when the object
        it follows is closed or freed. What the closed tracker is told afterwards (a connection
        returned to a closed pool) is not published."""
        try:
            with self._lock:
                self._closed = True
                kids = self._children
                if kids is not None and kids.generation == _state.generation:
                    for zero in (kids.in_use, kids.waiters, kids.capacity, kids.utilization):
                        zero(0.0)
                    in_use, capacity, utilization, waiters, wait, errors = _instruments()
                    for instrument in (in_use, capacity, utilization, waiters, wait):
                        instrument.remove(self.name)
                    for reason in REASONS:
                        errors.remove(self.name, reason)
                self._children = None
            with _state.lock:
                if _trackers.get(self.name) is self:
                    del _trackers[self.name]
        except Exception as internal:
            _selfmetrics.internal_error("use", internal)

    def _follow(self, resource: Any) -> None:
        """Close this tracker once ``resource`` (and every other resource it follows) is
        freed: at the next scrape or :func:`use` after that (:func:`close_gone`)."""
        with self._lock:
            self._holders += 1
        weakref.finalize(resource, self._let_go)

    def _let_go(self) -> None:
        # A finalizer: it may run inside a garbage collection, anywhere -- while this thread
        # holds a metric's or a guard's lock that close() would take again. So it only queues
        # the tracker (deque.append takes no lock); close_gone() does the work at a safe point.
        _gone.append(self)

    def _release_holder(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders <= 0
        if last:
            self.close()

    # -- low-level API ------------------------------------------------------------------------
    def acquired(self) -> None:
        """One more unit in use."""
        with self._lock:
            self._in_use += 1
            self._publish_in_use()

    def released(self) -> None:
        """One unit fewer in use."""
        with self._lock:
            self._in_use -= 1
            self._publish_in_use()

    def set_in_use(self, value: int) -> None:
        """Set the units in use, for integrations that read the level off the resource itself."""
        with self._lock:
            self._in_use = value
            self._publish_in_use()

    def set_capacity(self, capacity: float | None) -> None:
        """Change the capacity (a pool resized); None (unknown) sets capacity and ratio to 0."""
        capacity = _check_capacity(capacity)
        with self._lock:
            self._capacity = capacity
            try:
                kids = self._kids()
                if capacity is None:
                    kids.capacity(0.0)
                    kids.utilization(0.0)
                else:
                    kids.capacity(float(capacity))
                    kids.utilization(_ratio(self._in_use, capacity))
            except Exception as internal:
                _selfmetrics.internal_error("use", internal)

    def error(self, reason: str = "failure") -> None:
        """Count one error of the resource: ``"timeout"`` or ``"failure"``."""
        try:
            kids = self._kids()
            if reason == "timeout":
                kids.timeout(1)
            elif reason == "failure":
                kids.failure(1)
            else:
                kids.errors.labels(self.name, reason).inc()
        except Exception as internal:
            _selfmetrics.internal_error("use", internal)

    def classify(self, exc: BaseException) -> str | None:
        """The ``reason`` an exception escaping a wait is counted under (None: not an error)."""
        if isinstance(exc, self._timeouts):
            return "timeout"
        if isinstance(exc, Exception):
            return "failure"
        return None  # cancellation, KeyboardInterrupt, GeneratorExit: not the resource's fault

    def waiting(self) -> Wait:
        """A context manager (sync or async) around one wait to acquire a unit.

        While inside, ``resource_waiters`` is one higher; on exit the time spent is observed in
        ``resource_wait_seconds`` -- whether the wait succeeded or not -- and an escaping exception
        is counted: ``timeout`` for the ``timeouts`` types, ``failure`` for other exceptions
        (cancellation is not counted). The exception itself propagates unchanged.
        """
        return Wait(self)

    def _wait_begin(self, wait: Wait) -> None:
        with self._lock:
            if wait._open:
                return
            wait._open = True
            wait._started = _perf()
            self._waiters += 1
            try:
                self._kids().waiters(float(self._waiters))
            except Exception as internal:
                _selfmetrics.internal_error("use", internal)

    def _wait_end(self, wait: Wait, exc: BaseException | None, observe: bool) -> bool:
        elapsed = _perf() - wait._started
        with self._lock:
            if not wait._open:
                return False
            wait._open = False
            self._waiters -= 1
            try:
                self._kids().waiters(float(self._waiters))
            except Exception as internal:
                _selfmetrics.internal_error("use", internal)
        if observe:
            try:
                kids = self._kids()
                kids.wait(elapsed)
                reason = None if exc is None else self.classify(exc)
                if reason is not None:
                    (kids.timeout if reason == "timeout" else kids.failure)(1)
            except Exception as internal:
                _selfmetrics.internal_error("use", internal)
        return True

    # -- one unit of use ------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        """An exception escaped a unit of use: counted only if it is one of ``errors``."""
        try:
            if self._errors and isinstance(exc, self._errors):
                self.error("timeout" if isinstance(exc, self._timeouts) else "failure")
        except Exception as internal:  # never in place of the application's exception
            _selfmetrics.internal_error("use", internal)

    def __enter__(self) -> UseTracker:
        self.acquired()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.released()
        if exc is not None:
            self._failed(exc)

    async def __aenter__(self) -> UseTracker:
        self.acquired()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.released()
        if exc is not None:
            self._failed(exc)

    def __call__(self, func: F) -> F:
        """Decorate ``func``: one unit is in use while each call runs (to exhaustion for
        generators). The shape is chosen here, once; signature, name and
        ``inspect.iscoroutinefunction`` are preserved (wrapt).

        Raises:
            TypeError: ``func`` is not a function (a property, a string, a number).
        """
        func = _shapes.checked(func, "a USE tracker")
        wrapper = _WRAPPERS[_shapes.shape_of(func)](self, _shapes.names_of(func))
        # No key: the same tracker applied twice is nested use, each level one unit.
        remake = (_remake, (self.name, *self._settings))
        wrapped: F = _shapes.wrap(func, wrapper, None, remake)
        return wrapped


def _check_capacity(capacity: float | None) -> float | None:
    if capacity is None:
        return None
    if (
        isinstance(capacity, bool)
        or not isinstance(capacity, (int, float))
        or not 0 <= capacity < math.inf  # NaN fails too: it would make every ratio NaN
    ):
        raise ValueError(f"capacity must be a finite non-negative number or None, got {capacity!r}")
    return capacity


def _sync(tracker: UseTracker, names: tuple[str, str]) -> _shapes.Wrapper:
    coroutine = types.CoroutineType

    async def held(pending: _shapes.Pending) -> Any:
        # A sync function that returned a coroutine (an async function behind a plain
        # decorator): the unit is in use again while the coroutine runs, as for an async
        # function; one never awaited holds none.
        tracker.acquired()
        try:
            return await pending.coro
        except BaseException as exc:
            tracker._failed(exc)
            raise
        finally:
            tracker.released()

    _shapes.named(held, names)

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        tracker.acquired()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            try:
                tracker._failed(exc)
            finally:
                tracker.released()
            raise
        tracker.released()
        if type(result) is coroutine:
            return held(_shapes.Pending(result))
        return result

    return wrapper


def _async(tracker: UseTracker, names: tuple[str, str]) -> _shapes.Wrapper:
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        tracker.acquired()
        try:
            return await wrapped(*args, **kwargs)
        except BaseException as exc:
            tracker._failed(exc)
            raise
        finally:
            tracker.released()

    return _shapes.named(wrapper, names)


def _remake(func: Any, name: str, *settings: Any) -> Any:
    """``func`` decorated again with the tracker ``name``, made with these settings
    (:func:`use`'s) in a process that has none: how a decorated partial or callable object
    comes back from a pickle."""
    tracker = _trackers.get(name)
    if tracker is None:
        # Pickle protocols 0-2 may bring exception types back as others (TimeoutError as
        # OSError): the settings only make a tracker, never refuse the one already there.
        capacity, kind, timeouts, errors = settings
        tracker = use(name, capacity, kind=kind, timeouts=timeouts, errors=errors)
    return tracker(func)


_NOTHING = (None, None)


def _ignore(value: float) -> None:
    pass


class _NoErrors:
    """What a closed tracker counts other errors with: nothing."""

    def labels(self, *values: Any) -> Any:
        return self

    def inc(self, amount: float = 1) -> None:
        pass


#: A closed tracker's writers: they write nowhere.
_INERT = _Children(-1, _ignore, _ignore, _ignore, _ignore, _ignore, _ignore, _ignore, _NoErrors())


class _Unit:
    """A unit of ``tracker`` held for a whole generator call (``obskit._shapes.CallHooks``)."""

    __slots__ = ("tracker",)

    def __init__(self, tracker: UseTracker) -> None:
        self.tracker = tracker

    def begin(self) -> tuple[None, None]:
        self.tracker.acquired()
        return _NOTHING

    def end(self, state: None, exc: BaseException | None) -> None:
        try:
            if exc is not None:
                self.tracker._failed(exc)
        finally:
            self.tracker.released()


def _generator(tracker: UseTracker, names: tuple[str, str]) -> _shapes.Wrapper:
    return _shapes.generator(_Unit(tracker), names)


def _async_generator(tracker: UseTracker, names: tuple[str, str]) -> _shapes.Wrapper:
    return _shapes.async_generator(_Unit(tracker), names)


_WRAPPERS: dict[_shapes.Shape, Callable[[UseTracker, tuple[str, str]], _shapes.Wrapper]] = {
    "function": _sync,
    "coroutine": _async,
    "generator": _generator,
    "async_generator": _async_generator,
}


#: Trackers whose followed resource was closed or freed, waiting for :func:`close_gone`.
_gone: collections.deque[UseTracker] = collections.deque()


def close_gone() -> None:
    """Close the trackers whose resources went away since the last call (see
    :meth:`UseTracker.close`). Called by each scrape and by :func:`use`."""
    while _gone:
        try:
            tracker = _gone.popleft()
        except IndexError:  # another thread took the last one
            return
        tracker._release_holder()


def tracked_names() -> set[str]:
    """The names of the resources tracked now."""
    close_gone()
    with _state.lock:
        return set(_trackers.keys())


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _forked_by_gunicorn_master() -> bool:
    """Whether this fork is gunicorn's master starting a worker (``Arbiter.spawn_worker``)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "spawn_worker" and (
            frame.f_globals.get("__name__") == "gunicorn.arbiter"
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _forget_children_before_fork() -> None:
    # Multi-process mode: a process's gauges live in files named by its pid, and prometheus_client
    # starts a forked child's values from zero. gunicorn's master forks workers after a
    # ``--preload`` import made the trackers: without this, the master's one copy of the
    # capacity counts among the live processes and the workers publish nothing until first used.
    # Only the master stops counting: any other process that forks (a worker starting a helper
    # through multiprocessing) still serves, and its gauges stay.
    if not _multiprocess() or not _forked_by_gunicorn_master():
        return
    for tracker in list(_trackers.values()):
        with tracker._lock:
            kids = tracker._children
            tracker._children = None  # the next use in either process publishes everything again
        if kids is not None and kids.generation == _state.generation:
            try:  # the parent (the master, which serves nothing) stops counting
                kids.in_use(0.0)
                kids.capacity(0.0)
                kids.utilization(0.0)
                kids.waiters(0.0)
            except Exception as internal:
                _selfmetrics.internal_error("use", internal)


def _renew_locks_after_fork() -> None:
    # A child forked while another thread held a tracker's lock (inside `with tracker:`, in a
    # pool's checkout hook) would wait on it for ever: the child has only the forking thread.
    global _folded_lock
    _folded_lock = threading.Lock()
    for tracker in list(_trackers.values()):
        tracker._lock = threading.RLock()


def _publish_after_fork() -> None:
    # The child shows its own capacity from its start, as a tracker made there would -- and
    # none of its parent's units in use or waiters: those are the parent's, not its own.
    if not _multiprocess():
        return
    for tracker in list(_trackers.values()):
        with tracker._lock:
            tracker._children = None
            tracker._in_use = 0
            tracker._waiters = 0
    if _state.runtime is not None:
        for tracker in list(_trackers.values()):
            tracker.publish()


os.register_at_fork(after_in_child=_renew_locks_after_fork)  # before the publishing below
os.register_at_fork(before=_forget_children_before_fork, after_in_child=_publish_after_fork)


def use(
    name: str,
    capacity: float | None = None,
    *,
    kind: str = "resource",
    timeouts: ExceptionTypes = DEFAULT_TIMEOUTS,
    errors: ExceptionTypes = (),
) -> UseTracker:
    """The USE tracker of the resource ``name`` (the ``resource`` label).

    Asking again for the same name with the same settings returns the same tracker, so modules can
    share a resource without passing the tracker around.

    Args:
        name: the ``resource`` label value; a bounded, human-chosen name such as ``"db"``.
        capacity: units available in total (pool size, workers, queue bound); None if unknown.
        kind: what the resource is (``"sqlalchemy_pool"``, ``"executor"``...), for introspection.
        timeouts: exception types that, escaping :meth:`UseTracker.waiting`, count as
            ``reason="timeout"`` (default: the built-in ``TimeoutError`` family).
        errors: exception types that, escaping a unit of use (``with tracker:`` or the decorator),
            count as a resource error; default none -- see the module docs.

    Raises:
        ValueError: ``name`` is already tracked with other settings, or ``capacity`` is negative.
    """
    close_gone()
    tracker = UseTracker(name, capacity, kind=kind, timeouts=timeouts, errors=errors)
    collected = False
    while True:
        with _state.lock:
            existing = _trackers.get(name)
            if existing is None:
                _trackers[name] = tracker
                break
            if existing._settings == tracker._settings:
                return existing
            if collected or existing._holders <= 0:
                raise ValueError(
                    f"resource {name!r} is already tracked (capacity={existing._settings[0]}, "
                    f"kind={existing.kind!r}); give this one another name"
                )
        # The name's resource may be dropped but not freed yet: a SQLAlchemy engine sits in
        # reference cycles, which only a full collection frees -- an engine replaced with a new
        # pool size, on a configuration reload, would be refused until then. Once, on a clash.
        gc.collect()
        close_gone()
        collected = True
    if _state.runtime is not None:
        # Configured already: show the capacity before the first use. Before configure(), wait
        # for the first use, so metrics land in the registry configure() chose (multi-process).
        tracker.publish()
    return tracker
