"""Carrying the current trace context across threads and executors.

``asyncio`` tasks and ``asyncio.to_thread`` copy the context by themselves.
``loop.run_in_executor`` and ``ThreadPoolExecutor.submit`` do not: a span started in the worker
would begin a new trace and log lines would lose their ``trace_id``. These helpers copy the
caller's context into the worker::

    with obskit.ContextExecutor(max_workers=4) as pool:
        pool.submit(fetch, url)                     # runs in the caller's trace

    await obskit.run_in_executor(None, fetch, url)  # the same for asyncio
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import TypeVarTuple, Unpack
    else:
        from typing_extensions import TypeVarTuple, Unpack

__all__ = ["ContextExecutor", "run_in_executor", "wrap"]

P = ParamSpec("P")
R = TypeVar("R")
if TYPE_CHECKING:
    Ts = TypeVarTuple("Ts")


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind ``fn`` to a copy of the current context, to run it later in another thread."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # A copy per call: one Context cannot be entered twice at once (two threads, recursion).
        return ctx.copy().run(fn, *args, **kwargs)

    return run


class ContextExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the submitter's context."""

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)  # type: ignore[arg-type]


def run_in_executor(
    executor: Executor | None, fn: Callable[[Unpack[Ts]], R], *args: Unpack[Ts]
) -> asyncio.Future[R]:
    """``loop.run_in_executor`` that keeps the caller's context (trace, baggage, log fields).
    Checkers match ``args`` against ``fn``'s parameters, as for ``loop.run_in_executor``."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return loop.run_in_executor(executor, functools.partial(ctx.run, fn, *args))
