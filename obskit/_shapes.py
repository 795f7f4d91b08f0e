"""What every obskit decorator needs to know about the function it wraps, and the generator
wrappers they share.

``@obskit.red`` and a USE tracker used as a decorator both time (or hold a unit for) the whole
of a call: for a coroutine until it is awaited to its end, for a generator or an async generator
until it is exhausted or closed. Which of those a callable is, is decided once, at decoration
time (:func:`shape_of`). The sync and coroutine wrappers stay in each decorator's module (a few
lines each, on the hot path); the generator wrappers, which must forward ``send``, ``throw`` and
``close`` by hand, live here once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal, Protocol

import wrapt
from opentelemetry import context as otel_context
from opentelemetry.context import Context

__all__ = ["CallHooks", "Shape", "async_generator", "generator", "shape_of"]

Shape = Literal["function", "coroutine", "generator", "async_generator"]


def shape_of(func: Any) -> Shape:
    """What calling ``func`` gives: a value, a coroutine, a generator or an async generator.

    Looks through bound methods, ``classmethod``/``staticmethod`` objects and
    ``functools.partial``, and at a callable object's ``__call__``: an object whose
    ``async def __call__`` returns a coroutine is timed when awaited, not when called.
    """
    target = getattr(func, "__func__", func)
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    if not (inspect.isroutine(target) or isinstance(target, type)) and callable(target):
        target = type(target).__call__
    if inspect.isasyncgenfunction(target):
        return "async_generator"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    if inspect.isgeneratorfunction(target):
        code = getattr(target, "__code__", None)
        if code is not None and code.co_flags & inspect.CO_ITERABLE_COROUTINE:
            return "coroutine"  # @types.coroutine: awaited, not iterated
        return "generator"
    return "function"


class _BoundDecorated(wrapt.BoundFunctionWrapper[..., Any]):
    """A decorated method bound to its instance (or class): pickled as the method is, by
    ``getattr(owner, name)``."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        owner = getattr(self, "__self__", None)
        if owner is None:  # looked up on the class: the class owns it
            owner = getattr(self, "_self_owner", None)
        return (getattr, (owner, self.__name__))


class Decorated(wrapt.FunctionWrapper[..., Any]):
    """What obskit's decorators return (``wrapt``'s function wrapper): pickled by reference,
    as the undecorated function is -- by its qualified name, which finds this wrapper again --
    so a decorated function still goes to a process pool or ``multiprocessing``; copying
    gives it back, as for a function."""

    __bound_function_wrapper__ = _BoundDecorated

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__qualname__

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


class CallHooks(Protocol):
    """What a decorator does around one call of a generator or async generator it wraps."""

    def begin(self) -> tuple[Any, Context | None]:
        """The call starts (its first resume): the state :meth:`end` gets back, and the context
        to make current while the wrapped generator runs (or None)."""

    def end(self, state: Any, exc: BaseException | None) -> None:
        """The call is over: exhausted or closed early by its consumer (``exc`` None), or
        ended by ``exc``. Must not raise."""


def generator(
    hooks: CallHooks, wrapped: Callable[..., Any], args: Any, kwargs: Any
) -> Generator[Any, Any, Any]:
    """``wrapped(*args, **kwargs)``, a generator, run between ``hooks.begin`` and
    ``hooks.end``: every ``send``, ``throw`` and ``close`` reaches it (``yield from``).

    The generator is made here, at the call, so that bad arguments raise where they do
    undecorated (and count as a failed call); it is timed from its first item."""
    return _run_generator(hooks, _made(hooks, wrapped, args, kwargs))


def _made(hooks: CallHooks, wrapped: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The (async) generator object of ``wrapped(*args, **kwargs)``: making one runs none of
    its body, so only a bad call raises here -- a failed call of no duration."""
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        state, _ = hooks.begin()
        hooks.end(state, exc)
        raise


def _run_generator(hooks: CallHooks, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    state, ctx = hooks.begin()
    try:
        if ctx is None:
            result = yield from gen
        else:
            result = yield from _current_while_running(ctx, gen)
    except GeneratorExit:  # closed early by the consumer: not a failure of the call
        hooks.end(state, None)
        raise
    except BaseException as exc:
        hooks.end(state, exc)
        raise
    hooks.end(state, None)
    return result


def _current_while_running(ctx: Context, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``yield from gen`` with ``ctx`` current only while ``gen`` runs.

    A span made current across a ``yield`` would stay current in the consumer's code between
    items: the consumer's spans would become its children, and closing the generator from
    another context (another span, another task, the garbage collector) would reset the context
    to a stale one. So the context is attached around each resume and detached before each item
    is handed out.
    """
    value: Any = None
    thrown: BaseException | None = None
    while True:
        token = otel_context.attach(ctx)
        try:
            item = gen.send(value) if thrown is None else gen.throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            thrown = None
            otel_context.detach(token)
        try:
            value = yield item
        except GeneratorExit:
            token = otel_context.attach(ctx)
            try:
                gen.close()
            finally:
                otel_context.detach(token)
            raise
        except BaseException as exc:
            thrown = exc


def async_generator(
    hooks: CallHooks, wrapped: Callable[..., Any], args: Any, kwargs: Any
) -> AsyncGenerator[Any, Any]:
    """``wrapped(*args, **kwargs)``, an async generator, run between ``hooks.begin`` and
    ``hooks.end``, made at the call as ``generator`` does. An async generator cannot
    ``yield from``: sends, throws and ``aclose`` are forwarded by hand, with the context
    ``hooks.begin()`` returned current only while the wrapped one runs."""
    return _run_async_generator(hooks, _made(hooks, wrapped, args, kwargs))


async def _run_async_generator(hooks: CallHooks, agen: Any) -> AsyncGenerator[Any, Any]:
    state, ctx = hooks.begin()
    try:
        value: Any = None
        throw: BaseException | None = None
        while True:
            token = None if ctx is None else otel_context.attach(ctx)
            try:
                if throw is not None:
                    item = await agen.athrow(throw)
                else:
                    item = await agen.asend(value)
            except StopAsyncIteration:
                break
            finally:
                throw = None
                if token is not None:
                    otel_context.detach(token)
            try:
                value = yield item
            except BaseException as thrown:
                # GeneratorExit too (aclose(), or athrow(GeneratorExit)): forwarded as it came,
                # so a generator that handles it behaves as it does undecorated.
                throw = thrown
    except GeneratorExit:
        hooks.end(state, None)
        raise
    except BaseException as exc:
        hooks.end(state, exc)
        raise
    hooks.end(state, None)
