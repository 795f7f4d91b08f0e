"""``@obskit.red``: Rate, Errors and Duration of any function.

::

    @obskit.red
    def charge(card): ...

    @obskit.red(name="lookup", trace=True, errors=(TimeoutError, ConnectionError))
    async def lookup(key): ...

Records ``function_calls_total{function,module,result}`` (``result`` is ``ok`` or ``error``) and
``function_duration_seconds{function,module}``; with ``trace=True`` an INTERNAL span wraps the
call. Written with ``wrapt`` and shaped at decoration time for plain functions, coroutines,
generators and async generators (timed to exhaustion), methods, classmethods and staticmethods;
``inspect.signature``, ``__name__``, ``__doc__`` and ``inspect.iscoroutinefunction`` are
preserved, so FastAPI dependency injection and Django views keep working.

The wrapped function's exception reaches the caller unchanged (same object, same traceback);
obskit's own failures are swallowed and counted.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from obskit import _selfmetrics, _shapes, _state
from obskit._runtime import tracer_provider
from obskit._version import __version__
from obskit.http._semconv import mark_exception
from obskit.metrics._direct import Observer, adder
from obskit.metrics.instruments import counter, counting, histogram
from obskit.tracing._fastctx import current_span
from obskit.tracing.server_span import start_lean_span

__all__ = ["red"]

F = TypeVar("F", bound=Callable[..., Any])
Errors = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_perf = time.perf_counter
#: The instrumentation scope of the spans `trace=True` makes on obskit's own pipeline.
_SCOPE = InstrumentationScope("obskit.red", __version__)


class _Recorder:
    """Per-decorated-function state: label values and the cached metric children."""

    __slots__ = ("_children", "_tracer", "function", "is_error", "module", "span_name", "trace")

    def __init__(self, function: str, module: str, errors: Errors, trace: bool) -> None:
        self.function = function
        self.module = module
        self.trace = trace
        self.span_name = f"{module}.{function}" if module else function
        self._children: tuple[int, Any, Any, Any] | None = None
        #: (provider, tracer): the SDK's get_tracer() costs microseconds, so it is called once.
        self._tracer: tuple[Any, Any] | None = None
        self.is_error: Callable[[BaseException], bool]
        if isinstance(errors, (list, set, frozenset)):  # types given as a list: as a tuple
            errors = tuple(errors)
        if isinstance(errors, (type, tuple)):
            error_types = errors

            def is_error(exc: BaseException) -> bool:
                return isinstance(exc, error_types)

            self.is_error = is_error
        else:
            self.is_error = errors

    def children(self) -> tuple[int, Any, Any, Any]:
        children = self._children
        if children is None or children[0] != _state.generation:
            calls = counter(
                "function_calls",
                "Calls of functions decorated with @obskit.red, by result (ok or error).",
                ["function", "module", "result"],
            )
            duration = histogram(
                "function_duration_seconds",
                "Duration of functions decorated with @obskit.red, in seconds.",
                ["function", "module"],
            )
            ok, ok_folded = calls.kept(self.function, self.module, "ok")
            error, error_folded = calls.kept(self.function, self.module, "error")
            observed, observed_folded = duration.kept(self.function, self.module)
            # Written directly (obskit.metrics._direct); a write to an overflow series is
            # counted as one folded observation.
            children = self._children = (
                _state.generation,
                counting(calls, ok_folded, adder(ok)),
                counting(calls, error_folded, adder(error)),
                counting(duration, observed_folded, Observer(observed)),
            )
        return children

    def failed(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as an error (the ``errors`` option), asked once per call so
        that the metric and the span agree; a predicate that raises counts as an error."""
        try:
            return bool(self.is_error(exc))
        except Exception:
            return True

    def record(self, started: float, failed: bool) -> None:
        elapsed = _perf() - started
        try:
            _, ok, error, duration = self.children()
            (error if failed else ok)(1)
            duration(elapsed)
        except Exception as internal:
            _selfmetrics.internal_error("red", internal)

    def new_span(self) -> Any:
        """An INTERNAL span (not made current), or None when the current trace is not recorded.

        A child of a local span that is not recording would be dropped by every parent-based
        or trace-id-ratio sampler (and gets its root's answer from the others), so it is not
        created at all: with ``trace=True`` an unsampled call costs one context lookup. A
        remote parent (a consumer that attached its producer's ``traceparent``) never records:
        the sampler decides for it, as the SDK's does.
        """
        try:
            current = current_span()
            if not current.is_recording():
                parent = current.get_span_context()
                if parent.is_valid and not parent.is_remote:
                    return None
            # On obskit's own pipeline: the lean span the HTTP pipeline uses for SERVER spans.
            span = start_lean_span(self.span_name, SpanKind.INTERNAL, _SCOPE)
            if span is None:
                provider = tracer_provider()
                cached = self._tracer
                if cached is None or cached[0] is not provider:
                    cached = self._tracer = (
                        provider,
                        provider.get_tracer("obskit.red", __version__),
                    )
                span = cached[1].start_span(self.span_name, kind=SpanKind.INTERNAL)
            if span.is_recording():
                span.set_attribute("code.function.name", self.span_name)
            return span
        except Exception as internal:
            _selfmetrics.internal_error("red_span", internal)
            return None

    def start_span(self) -> Any:
        """:meth:`new_span` made current for a whole call: ``(span, token)``, or None."""
        span = self.new_span()
        if span is None:
            return None
        return span, otel_context.attach(otel_trace.set_span_in_context(span))

    def end_span(self, state: Any, exc: BaseException | None, failed: bool = False) -> None:
        """End a span from :meth:`start_span` or ``(span, None)``; marked with ``exc`` when the
        call ``failed`` (see :meth:`failed`)."""
        if state is None:
            return
        span, token = state
        try:
            if token is not None:
                # First, so the caller's context is restored whatever happens below.
                otel_context.detach(token)
            if failed and exc is not None and span.is_recording():
                mark_exception(span, exc)
        except Exception as internal:
            _selfmetrics.internal_error("red_span", internal)
        finally:
            # Always ended, so a span whose marking failed is still exported; an application's
            # span processor that raises in on_end (the SDK does not catch it) must not take
            # the place of what the call returned or raised.
            try:
                span.end()
            except Exception as internal:
                _selfmetrics.internal_error("red_span", internal)

    # -- a generator's call (obskit._shapes.CallHooks) ------------------------------------------
    # Its span is never current across a yield: only while the generator runs (context()).

    def begin(self) -> tuple[tuple[float, Any], Any]:
        span = self.new_span() if self.trace else None
        if span is None:
            return (_perf(), None), None
        return (_perf(), span), otel_trace.set_span_in_context(span)

    def end(self, state: tuple[float, Any], exc: BaseException | None) -> None:
        started, span = state
        failed = exc is not None and self.failed(exc)
        self.record(started, failed)
        if span is not None:
            self.end_span((span, None), exc, failed)


def _sync(rec: _Recorder) -> Any:
    @wrapt.decorator(proxy=_shapes.Decorated)
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = rec.start_span() if rec.trace else None
        started = _perf()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            failed = rec.failed(exc)
            rec.record(started, failed)
            rec.end_span(span, exc, failed)
            raise
        rec.record(started, False)
        if span is not None:
            rec.end_span(span, None)
        return result

    return wrapper


def _async(rec: _Recorder) -> Any:
    @wrapt.decorator(proxy=_shapes.Decorated)
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = rec.start_span() if rec.trace else None
        started = _perf()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            failed = rec.failed(exc)
            rec.record(started, failed)
            rec.end_span(span, exc, failed)
            raise
        rec.record(started, False)
        if span is not None:
            rec.end_span(span, None)
        return result

    return wrapper


def _generator(rec: _Recorder) -> Any:
    @wrapt.decorator(proxy=_shapes.Decorated)
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return _shapes.generator(rec, wrapped, args, kwargs)

    return wrapper


def _async_generator(rec: _Recorder) -> Any:
    @wrapt.decorator(proxy=_shapes.Decorated)
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return _shapes.async_generator(rec, wrapped, args, kwargs)

    return wrapper


def _underlying(func: Any) -> Any:
    return getattr(func, "__func__", func)


def _describe(target: Any) -> tuple[str, str]:
    """``(qualname, module)`` of what ``target`` runs: a partial's function, a callable's class.

    Without this every ``functools.partial`` would be labelled ``?`` in module ``functools``, and
    every callable object ``?``: unrelated functions merged into one series.
    """
    while isinstance(target, functools.partial):
        target = target.func
    if not hasattr(target, "__qualname__") and not hasattr(target, "__name__"):
        target = type(target)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or "?"
    return str(qualname), str(getattr(target, "__module__", None) or "")


def _make(func: F, name: str | None, trace: bool, errors: Errors) -> F:
    qualname, module = _describe(_underlying(func))
    if name:
        qualname = str(name)
    rec = _Recorder(qualname, module, errors, trace)
    wrapped: F = _WRAPPERS[_shapes.shape_of(func)](rec)(func)
    return wrapped


_WRAPPERS: dict[_shapes.Shape, Callable[[_Recorder], Any]] = {
    "function": _sync,
    "coroutine": _async,
    "generator": _generator,
    "async_generator": _async_generator,
}


@overload
def red(func: F, /) -> F: ...


@overload
def red(
    *, name: str | None = None, trace: bool = False, errors: Errors = Exception
) -> Callable[[F], F]: ...


def red(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    trace: bool = False,
    errors: Errors = Exception,
) -> F | Callable[[F], F]:
    """Record Rate, Errors and Duration of the decorated function.

    Args:
        name: the ``function`` label (default: the function's ``__qualname__``).
        trace: also wrap each call in an INTERNAL span (skipped inside unsampled local traces).
        errors: which exceptions make ``result="error"``: exception types, or a predicate.
            Anything else that escapes (a 404 exception you raise on purpose, cancellation)
            is recorded as ``result="ok"`` and re-raised unchanged.
    """
    if func is not None:
        return _make(func, name, trace, errors)

    def decorate(f: F) -> F:
        return _make(f, name, trace, errors)

    return decorate
