"""Ready USE instrumentation for the pools and queues services actually run out of.

Each function takes the object the application already made, wraps *that object* (never its
class, so nothing else in the process changes and ``from x import Pool`` cannot bypass it),
imports its library lazily, and returns the :class:`~obskit.metrics.use.UseTracker`::

    from obskit.metrics.pools import instrument_sqlalchemy_pool

    engine = sqlalchemy.create_engine(url, pool_size=5, max_overflow=0, pool_timeout=2)
    instrument_sqlalchemy_pool(engine, name="orders-db")

Instrumenting the same object twice returns the first tracker (nothing is counted twice; for
SQLAlchemy, an engine and its pool are the same object). Without ``name``, each object gets a
resource of its own: a default name that another live resource holds gets ``#2``, ``#3``...
(two engines on one database, two unnamed queues). Give a name to keep it stable.
Unlike a bare :func:`~obskit.metrics.use.use` (which may run at import time and waits for the
first use), these publish the capacity at once: they take a live object, so the application is
running and the dashboards should show the pool's size before its first checkout.
Instrument a pool before it hands out connections: units checked out earlier are unknown to the
tracker, and so is their return (SQLAlchemy's are picked up from ``pool.checkedout()``, a
semaphore's from its value).

==========================  ====================  ===================  ===========================
function                    in use                capacity             waiters / wait time
==========================  ====================  ===================  ===========================
``sqlalchemy_pool``         checked-out conns     pool_size+overflow   callers inside the pool's
                            (checkout/checkin/                         ``_do_get`` (waiting for a
                            detach events)                             connection or opening one)
``psycopg_pool``            ``getconn``..         ``pool.max_size``    callers inside ``getconn``
                            ``putconn``           (follows resize)
``executor``                running tasks         ``max_workers``      queued tasks; wait = start
                                                                       minus submit
``asyncio_queue``           items queued          ``maxsize``          ``put()`` callers (blocked
                                                  (none if 0)          while the queue is full)
``asyncio_semaphore``       holders               given                ``acquire()`` callers
==========================  ====================  ===================  ===========================
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import wrapt

from obskit import _selfmetrics
from obskit.metrics.use import DEFAULT_TIMEOUTS, UseTracker, tracked_names, use

__all__ = [
    "instrument_asyncio_queue",
    "instrument_asyncio_semaphore",
    "instrument_executor",
    "instrument_psycopg_pool",
    "instrument_sqlalchemy_pool",
]

#: Attribute set on an instrumented object, holding its tracker (makes instrumenting idempotent).
_MARK = "_obskit_use_tracker"

# QueuePool._do_get calls itself (``return self._do_get()``) when it loses a race for an overflow
# slot; the nested call must not count a second waiter. A ContextVar rather than a thread-local:
# SQLAlchemy's asyncio pools run callers as greenlets on one thread, each with its own context.
_in_do_get: contextvars.ContextVar[bool] = contextvars.ContextVar("obskit_in_do_get", default=False)
#: Whether the checkout under way had its failure counted by its wait (``_do_get``) already.
_wait_failed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "obskit_wait_failed", default=False
)


def _existing(obj: Any) -> UseTracker | None:
    tracker = getattr(obj, _MARK, None)
    return tracker if isinstance(tracker, UseTracker) else None


def _own_name(name: str | None, default: str) -> str:
    """``name`` as given (the same name on purpose shares one tracker), else ``default`` --
    with ``#2``, ``#3``... when another live resource holds it: two pools on one database, or
    two unnamed queues, are two resources, and one tracker for both would add their counts
    against one capacity."""
    if name is not None:
        return name
    taken = tracked_names()
    if default not in taken:
        return default
    n = 2
    while f"{default}#{n}" in taken:
        n += 1
    return f"{default}#{n}"


# -- SQLAlchemy -----------------------------------------------------------------------------------
def _sqlalchemy_capacity(pool: Any) -> float | None:
    from sqlalchemy.pool import AssertionPool, QueuePool, StaticPool

    if isinstance(pool, QueuePool):
        overflow = pool._max_overflow
        return None if overflow < 0 else pool.size() + overflow
    if isinstance(pool, (StaticPool, AssertionPool)):
        return 1
    return None  # NullPool (no pooling), SingletonThreadPool (one per thread): no fixed bound


def _wrap_pool(pool: Any, tracker: UseTracker) -> None:
    """Count waiters and time the wait inside this pool object's ``_do_get``, and the failures
    of its ``connect`` that happen after the wait.

    ``Pool._do_get`` is where a checkout blocks: QueuePool waits there on its queue (up to
    ``pool_timeout``, then raises ``sqlalchemy.exc.TimeoutError``) or opens a new connection when
    it may grow. No public event fires *before* the wait -- ``checkout`` fires after it -- so this
    private method is the one place to see saturation; it has kept its name and role since
    SQLAlchemy 0.x. The wrapper goes on the pool instance only.
    """
    if getattr(pool, "_obskit_do_get_wrapped", False):
        return

    def do_get(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if _in_do_get.get():
            return wrapped(*args, **kwargs)
        token = _in_do_get.set(True)
        try:
            with tracker.waiting():
                return wrapped(*args, **kwargs)
        except BaseException:
            _wait_failed.set(True)  # counted by the wait: not again by connect() below
            raise
        finally:
            _in_do_get.reset(token)

    def connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # A pool that holds connections hands one out from _do_get; reconnecting it (after an
        # invalidation, or a failed pre-ping) happens after, here: a database that went down
        # under a warm pool fails every checkout outside the wait.
        token = _wait_failed.set(False)
        try:
            return wrapped(*args, **kwargs)
        except BaseException as exc:
            if not _wait_failed.get():
                try:
                    reason = tracker.classify(exc)
                    if reason is not None:
                        tracker.error(reason)
                except Exception as internal:  # never in place of the application's exception
                    _selfmetrics.internal_error("use", internal)
            raise
        finally:
            _wait_failed.reset(token)

    wrapt.wrap_function_wrapper(pool, "_do_get", do_get)
    wrapt.wrap_function_wrapper(pool, "connect", connect)
    pool._obskit_do_get_wrapped = True


def instrument_sqlalchemy_pool(engine: Any, name: str | None = None) -> UseTracker:
    """USE metrics of a SQLAlchemy connection pool.

    ``in_use`` follows the pool's ``checkout``, ``checkin`` and ``detach`` events (each
    connection record is counted once, so a checkin without a counted checkout -- a failed
    checkout handler -- cannot push the count below the truth); capacity is
    ``pool_size + max_overflow`` for a ``QueuePool`` (unknown when ``max_overflow=-1``); waiters
    and ``resource_wait_seconds`` are measured around the pool's ``_do_get`` (see
    :func:`_wrap_pool`), so the wait includes opening a new connection when the pool grows;
    ``sqlalchemy.exc.TimeoutError`` counts ``reason="timeout"``, any other failure to get a
    connection (database down) ``reason="failure"``.

    Args:
        engine: an ``Engine``, an ``AsyncEngine`` or a ``Pool``. With an engine, the
            instrumentation follows ``engine.dispose()`` to the pool that replaces the old one.
        name: the ``resource`` label (default ``sqlalchemy:<database>``).
    """
    from sqlalchemy import event
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.pool import Pool

    target = getattr(engine, "sync_engine", engine)  # AsyncEngine -> its Engine
    if isinstance(target, Pool):
        pool, owner = target, target
        default = "sqlalchemy"
    else:
        pool, owner = target.pool, target
        url = target.url
        default = f"sqlalchemy:{url.database or url.get_backend_name()}"
    # Marked on the engine and on its pool: instrumenting one and then the other is one pool.
    tracker = _existing(owner) or _existing(pool)
    if tracker is not None:
        return tracker
    tracker = use(
        _own_name(name, default),
        _sqlalchemy_capacity(pool),
        kind="sqlalchemy_pool",
        timeouts=(sa_exc.TimeoutError, *DEFAULT_TIMEOUTS),
    )
    out: set[int] = set()  # ids of the connection records counted as checked out
    # Connections already out when instrumented: released on their (uncounted) checkin.
    unknown = [pool.checkedout() if hasattr(pool, "checkedout") else 0]
    if unknown[0]:
        tracker.set_in_use(unknown[0])

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # The tracker's own (re-entrant) lock, read at each call: a forked child gets a fresh
        # one, where a lock another thread held at the fork would stay held for good.
        with tracker._lock:
            key = id(record)
            if key in out:
                return
            out.add(key)
        tracker.acquired()

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        with tracker._lock:
            key = id(record)
            if key in out:
                out.discard(key)
            elif unknown[0] > 0:
                unknown[0] -= 1
            else:
                return
        tracker.released()

    def on_disposed(engine: Any) -> None:
        # Engine.dispose() replaced the pool: events carry over (recreate() copies the dispatch),
        # the instance wrapper and the mark do not.
        _wrap_pool(engine.pool, tracker)
        setattr(engine.pool, _MARK, tracker)

    # Appended after the application's own checkout listeners: a listener that raises
    # DisconnectionError (pessimistic ping) makes SQLAlchemy retry before reaching ours.
    event.listen(owner, "checkout", on_checkout)
    event.listen(owner, "checkin", on_checkin)
    event.listen(owner, "detach", on_checkin)  # a detached connection is never checked in
    if owner is not pool:
        event.listen(owner, "engine_disposed", on_disposed)
    _wrap_pool(pool, tracker)
    setattr(owner, _MARK, tracker)
    setattr(pool, _MARK, tracker)
    tracker._follow(owner)  # an engine gone (recreated): its series go too
    tracker.publish()
    return tracker


# -- psycopg_pool ---------------------------------------------------------------------------------
def instrument_psycopg_pool(pool: Any, name: str | None = None) -> UseTracker:
    """USE metrics of a ``psycopg_pool`` ``ConnectionPool`` or ``AsyncConnectionPool``.

    The pool's ``getconn`` and ``putconn`` are wrapped on the instance (``connection()`` calls
    both through the instance, so it is covered): time inside ``getconn`` is the wait (waiting in
    the pool's queue, plus the connection check), a connection handed out is in use until
    ``putconn``; ``PoolTimeout`` counts ``reason="timeout"``, ``TooManyRequests``, ``PoolClosed``
    and other failures ``reason="failure"``. Capacity is ``pool.max_size``, re-read on every
    ``getconn`` so ``pool.resize()`` shows up.

    Why not ``get_stats()`` at scrape time: a scrape-time collector is invisible in gunicorn's
    multi-process mode (only values written through the metric objects are aggregated), and the
    stats hold no distribution of wait times. ``pool.get_stats()`` stays available, and its
    ``requests_waiting`` equals ``resource_waiters`` (the tests check it).

    Args:
        pool: the pool object.
        name: the ``resource`` label (default: the pool's ``name``, e.g. ``pool-1``).
    """
    import psycopg_pool

    tracker = _existing(pool)
    if tracker is not None:
        return tracker
    tracker = use(
        _own_name(name, str(pool.name)),
        pool.max_size,
        kind="psycopg_pool",
        timeouts=(psycopg_pool.PoolTimeout, *DEFAULT_TIMEOUTS),
    )

    # A pool freed (closed and replaced): its series go. Not at close(): what fails while it
    # closes (a waiter's PoolClosed, connections returned) is still counted.
    tracker._follow(pool)

    def follow_resize() -> None:
        if pool.max_size != tracker.capacity:
            tracker.set_capacity(pool.max_size)

    # The connections this wrapper handed out: one returned that was out before instrumenting
    # is not released (it was never counted). Weak: a connection the app drops is not kept.
    out: weakref.WeakSet[Any] = weakref.WeakSet()

    def handed_out(conn: Any) -> None:
        with tracker._lock:  # renewed after a fork (see instrument_sqlalchemy_pool)
            out.add(conn)
        tracker.acquired()

    def returned(conn: Any) -> None:
        with tracker._lock:
            if conn not in out:
                return
            out.discard(conn)
        tracker.released()

    def conn_of(args: Any, kwargs: Any) -> Any:
        return args[0] if args else kwargs.get("conn")

    if isinstance(pool, psycopg_pool.AsyncConnectionPool):

        async def agetconn(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            follow_resize()
            async with tracker.waiting():
                conn = await wrapped(*args, **kwargs)
            handed_out(conn)
            return conn

        async def aputconn(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            conn = conn_of(args, kwargs)
            try:
                result = await wrapped(*args, **kwargs)
            except ValueError:  # "can't return connection to pool": it was never ours
                raise
            except BaseException:
                returned(conn)
                raise
            returned(conn)
            return result

        wrapt.wrap_function_wrapper(pool, "getconn", agetconn)
        wrapt.wrap_function_wrapper(pool, "putconn", aputconn)
    else:

        def getconn(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            follow_resize()
            with tracker.waiting():
                conn = wrapped(*args, **kwargs)
            handed_out(conn)
            return conn

        def putconn(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            conn = conn_of(args, kwargs)
            try:
                result = wrapped(*args, **kwargs)
            except ValueError:  # "can't return connection to pool": it was never ours
                raise
            except BaseException:
                returned(conn)
                raise
            returned(conn)
            return result

        wrapt.wrap_function_wrapper(pool, "getconn", getconn)
        wrapt.wrap_function_wrapper(pool, "putconn", putconn)
    setattr(pool, _MARK, tracker)
    tracker.publish()
    return tracker


# -- concurrent.futures ---------------------------------------------------------------------------
def instrument_executor(executor: ThreadPoolExecutor, name: str | None = None) -> UseTracker:
    """USE metrics of a ``ThreadPoolExecutor``: workers busy, tasks queued, time in the queue.

    ``submit`` is wrapped on the instance (``map`` and ``loop.run_in_executor`` go through it).
    A submitted task is a waiter until a worker starts it -- the time from submit to start is
    observed in ``resource_wait_seconds`` -- and then in use until it returns. A task cancelled
    while queued leaves the queue (its queued time is observed); one failed by a broken executor
    counts ``reason="failure"``. The task's own exception is not a resource error.

    Args:
        executor: a ``ThreadPoolExecutor`` (or subclass, such as ``obskit.ContextExecutor``).
        name: the ``resource`` label (default: the executor's thread-name prefix).

    Raises:
        TypeError: not a ``ThreadPoolExecutor`` (a process pool's tasks run elsewhere).
    """
    if not isinstance(executor, ThreadPoolExecutor):
        raise TypeError(f"instrument_executor takes a ThreadPoolExecutor, got {executor!r}")
    tracker = _existing(executor)
    if tracker is not None:
        return tracker
    tracker = use(
        _own_name(name, str(getattr(executor, "_thread_name_prefix", "") or "executor")),
        executor._max_workers,
        kind="executor",
    )

    def submit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not args:  # no function: the executor's own error, as without obskit
            return wrapped(*args, **kwargs)
        fn, rest = args[0], args[1:]
        wait = tracker.waiting().begin()

        def run(*a: Any, **kw: Any) -> Any:
            wait.end()
            with tracker:
                return fn(*a, **kw)

        try:
            future: Future[Any] = wrapped(run, *rest, **kwargs)
        except BaseException:
            wait.abandon()  # refused (shut down): it never queued
            raise

        def done(f: Future[Any]) -> None:
            # Only for tasks that never started: a worker calls run() -- ending the wait --
            # before the future can complete, and a cancelled or broken task never runs.
            if f.cancelled():
                wait.end()
            else:
                wait.end(f.exception())

        future.add_done_callback(done)
        return future

    wrapt.wrap_function_wrapper(executor, "submit", submit)
    setattr(executor, _MARK, tracker)
    tracker._follow(executor)  # freed: its series go, and its name is free again
    tracker.publish()
    return tracker


# -- asyncio --------------------------------------------------------------------------------------
def instrument_asyncio_queue(queue: asyncio.Queue[Any], name: str | None = None) -> UseTracker:
    """USE metrics of an ``asyncio.Queue`` (also Priority and Lifo queues).

    In use = items queued (``qsize()``, re-read after every ``put_nowait``/``get_nowait``, which
    ``put()``/``get()`` also go through); capacity = ``maxsize`` (unknown when unbounded);
    waiters = producers inside ``put()``, which blocks while the queue is full, and
    ``resource_wait_seconds`` the time each ``put()`` took. ``put_nowait`` refused with
    ``QueueFull`` counts ``reason="failure"``. Consumers waiting on an empty queue are not
    saturation and are not counted.
    """
    tracker = _existing(queue)
    if tracker is not None:
        return tracker
    tracker = use(
        _own_name(name, "asyncio_queue"),
        queue.maxsize if queue.maxsize > 0 else None,
        kind="asyncio_queue",
    )
    if queue.qsize():
        tracker.set_in_use(queue.qsize())

    async def put(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # QueueFull from the inner put_nowait cannot happen here (put waits for room).
        async with tracker.waiting():
            return await wrapped(*args, **kwargs)

    def put_nowait(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            result = wrapped(*args, **kwargs)
        except asyncio.QueueFull:
            tracker.error("failure")
            raise
        tracker.set_in_use(queue.qsize())
        return result

    def get_nowait(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        tracker.set_in_use(queue.qsize())
        return result

    wrapt.wrap_function_wrapper(queue, "put", put)
    wrapt.wrap_function_wrapper(queue, "put_nowait", put_nowait)
    wrapt.wrap_function_wrapper(queue, "get_nowait", get_nowait)
    setattr(queue, _MARK, tracker)
    tracker._follow(queue)  # freed: its series go, and its name is free again
    tracker.publish()
    return tracker


def instrument_asyncio_semaphore(
    sem: asyncio.Semaphore, capacity: int, name: str | None = None
) -> UseTracker:
    """USE metrics of an ``asyncio.Semaphore`` (or ``BoundedSemaphore``) used as a limiter.

    Waiters are tasks inside ``acquire()`` (``async with sem`` goes through it), the wait is
    the time ``acquire()`` took, and holders are in use until ``release()``. ``capacity`` is the
    value the semaphore was created with (asyncio does not expose it). A semaphore released more
    often than acquired (a signal rather than a limiter) makes ``in_use`` negative: track
    limiters only.
    """
    tracker = _existing(sem)
    if tracker is not None:
        return tracker
    tracker = use(_own_name(name, "asyncio_semaphore"), capacity, kind="asyncio_semaphore")
    held = capacity - getattr(sem, "_value", capacity)  # units taken before instrumenting
    if held > 0:
        tracker.set_in_use(held)

    async def acquire(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        async with tracker.waiting():
            result = await wrapped(*args, **kwargs)
        tracker.acquired()
        return result

    def release(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)  # BoundedSemaphore over-release raises: not counted
        tracker.released()
        return result

    wrapt.wrap_function_wrapper(sem, "acquire", acquire)
    wrapt.wrap_function_wrapper(sem, "release", release)
    setattr(sem, _MARK, tracker)
    tracker._follow(sem)  # freed: its series go, and its name is free again
    tracker.publish()
    return tracker
