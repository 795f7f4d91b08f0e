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
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from obskit import _selfmetrics, _shapes, _state
from obskit._runtime import _install_global, tracer_provider
from obskit._version import __version__
from obskit.http._semconv import mark_exception
from obskit.metrics._direct import Observer, adder
from obskit.metrics.instruments import counter, counting, histogram
from obskit.tracing._fastctx import current_span
from obskit.tracing.server_span import start_lean_span

__all__ = ["red"]

F = TypeVar("F", bound=Callable[..., Any])
#: What ``errors=`` takes: an exception type, a tuple, list or any iterable of them, or a
#: predicate.
Errors = type[BaseException] | Iterable[type[BaseException]] | Callable[[BaseException], bool]
#: ``errors=`` as checked: several types made one tuple.
_Rule = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_perf = time.perf_counter
#: The instrumentation scope of the spans `trace=True` makes on obskit's own pipeline.
_SCOPE = InstrumentationScope("obskit.red", __version__)


class _Recorder:
    """Per-decorated-function state: label values and the cached metric children."""

    __slots__ = ("_children", "_tracer", "function", "is_error", "module", "span_name", "trace")

    def __init__(
        self,
        function: str,
        module: str,
        is_error: Callable[[BaseException], bool],
        trace: bool,
    ) -> None:
        self.function = function
        self.module = module
        self.trace = trace
        self.span_name = f"{module}.{function}" if module else function
        self._children: tuple[int, Any, Any, Any] | None = None
        #: (provider, tracer): the SDK's get_tracer() costs microseconds, so it is called once.
        self._tracer: tuple[Any, Any] | None = None
        self.is_error = is_error

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
        """Whether ``exc`` counts as an error (the ``errors`` option, see :func:`_error_rule`),
        asked once per call so that the metric and the span agree; a predicate that raises
        counts as an error."""
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
        the sampler decides for it, as the SDK's does -- and where a stock sampler's answer is
        a drop, no span is made either, as under a local unsampled parent: the SDK's would be a
        ``NonRecordingSpan`` with an id of its own, never exported.
        """
        try:
            current = current_span()
            if not current.is_recording():
                parent = current.get_span_context()
                if parent.is_valid:
                    if not parent.is_remote:
                        if not parent.trace_flags & 1:
                            return None
                        # A sampled local parent that has ended (background work after the
                        # request answered): the sampler follows its flag, as the SDK's does.
                    else:
                        decide = _install_global().sampler.fast
                        if decide is not None and not decide(parent, parent.trace_id):
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

    def hand_over(self, state: Any) -> Any:
        """The span of :meth:`start_span`'s ``state`` (or None), no longer current: the call
        returned a coroutine, which makes it current again while it is awaited (elsewhere,
        maybe in another task) and ends it."""
        if state is None:
            return None
        span, token = state
        try:
            otel_context.detach(token)
        except Exception as internal:
            _selfmetrics.internal_error("red_span", internal)
        return span

    def take_over(self, span: Any) -> Any:
        """:meth:`hand_over`'s span made current in the awaiting coroutine: ``(span, token)``
        for :meth:`end_span`, or None."""
        if span is None:
            return None
        try:
            return span, otel_context.attach(otel_trace.set_span_in_context(span))
        except Exception as internal:
            _selfmetrics.internal_error("red_span", internal)
            return span, None

    # -- a generator's call (obskit._shapes.CallHooks) ------------------------------------------
    # Its span is never current across a yield: only while the generator runs (context()).

    def begin(self) -> tuple[tuple[float, Any], Any]:
        span = self.new_span() if self.trace else None
        if span is None:
            return (_perf(), None), None
        return (_perf(), span), otel_trace.set_span_in_context(span)

    def end(self, state: tuple[float, Any], exc: BaseException | None) -> None:
        started, span = state
        self.finish(started, None if span is None else (span, None), exc)

    def finish(self, started: float, state: Any, exc: BaseException | None) -> None:
        """Record a call that began at ``started`` and end its span ``state`` (see
        :meth:`end_span`); ``exc`` is what it raised, or None. The wrappers' success paths
        inline this, as they are the hot ones."""
        failed = exc is not None and self.failed(exc)
        self.record(started, failed)
        if state is not None:
            self.end_span(state, exc, failed)


def _sync(rec: _Recorder, names: tuple[str, str]) -> _shapes.Wrapper:
    coroutine = types.CoroutineType

    async def awaited(pending: _shapes.Pending, started: float, span: Any) -> Any:
        # A sync function that returned a coroutine (an async function behind a plain
        # decorator): the call ends when the coroutine does.
        state = rec.take_over(span)
        try:
            result = await pending.coro
        except BaseException as exc:
            rec.finish(started, state, exc)
            raise
        rec.finish(started, state, None)
        return result

    _shapes.named(awaited, names)

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = rec.start_span() if rec.trace else None
        started = _perf()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            rec.finish(started, span, exc)
            raise
        if type(result) is coroutine:
            return awaited(_shapes.Pending(result), started, rec.hand_over(span))
        rec.record(started, False)
        if span is not None:
            rec.end_span(span, None)
        return result

    return wrapper


def _async(rec: _Recorder, names: tuple[str, str]) -> _shapes.Wrapper:
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        span = rec.start_span() if rec.trace else None
        started = _perf()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            rec.finish(started, span, exc)
            raise
        rec.record(started, False)
        if span is not None:
            rec.end_span(span, None)
        return result

    return _shapes.named(wrapper, names)


def _underlying(func: Any) -> Any:
    return getattr(func, "__func__", func)


def _describe(target: Any) -> tuple[str, str, Any]:
    """``(qualname, module, what)`` of what ``target`` runs: a partial's (or partialmethod's,
    or singledispatchmethod's) function, a callable's class.

    Without this every ``functools.partial`` would be labelled ``?`` in module ``functools``, and
    every callable object ``?``: unrelated functions merged into one series.
    """
    while isinstance(
        target, (functools.partial, functools.partialmethod, functools.singledispatchmethod)
    ):
        target = _underlying(target.func)
    if not hasattr(target, "__qualname__") and not hasattr(target, "__name__"):
        target = type(target)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or "?"
    return str(qualname), str(getattr(target, "__module__", None) or ""), target


def _error_rule(errors: _Rule, end: type[BaseException] | None) -> Callable[[BaseException], bool]:
    """The test ``failed()`` puts an exception to, for the ``errors`` option (checked).

    A predicate is only asked about an ``Exception``: cancellation, ``KeyboardInterrupt``,
    ``SystemExit`` and ``GeneratorExit`` are never errors of the call. ``end`` is the exception
    that ends iteration normally out of this function (``StopIteration`` out of ``__next__``,
    ``StopAsyncIteration`` out of ``__anext__``): not an error, unless the types given name it.
    """
    if isinstance(errors, (type, tuple)):
        types_ = errors if isinstance(errors, tuple) else (errors,)
        if end is not None and not any(issubclass(t, end) for t in types_):
            normal_end = end

            def is_error_but_end(exc: BaseException) -> bool:
                return isinstance(exc, types_) and not isinstance(exc, normal_end)

            return is_error_but_end

        def is_error(exc: BaseException) -> bool:
            return isinstance(exc, types_)

        return is_error
    predicate = errors
    not_asked = (end,) if end is not None else ()

    def asked(exc: BaseException) -> bool:
        return (
            isinstance(exc, Exception) and not isinstance(exc, not_asked) and bool(predicate(exc))
        )

    return asked


def _checked_errors(errors: Any) -> _Rule:
    """``errors`` as :func:`_error_rule` takes it (a list, set or other iterable of types as a
    tuple), refused here, at decoration, when it is not an exception type, an iterable of them,
    or a predicate: at the first exception it would count every call as an error."""
    several = isinstance(errors, Iterable) and not isinstance(errors, (type, tuple, str))
    if several and not callable(errors):
        errors = tuple(errors)
    if isinstance(errors, type):
        if issubclass(errors, BaseException):
            return errors
    elif isinstance(errors, tuple):
        if all(isinstance(t, type) and issubclass(t, BaseException) for t in errors):
            return errors
    elif callable(errors):
        return cast("Callable[[BaseException], bool]", errors)
    raise TypeError(
        "errors= takes an exception type, a tuple or list of exception types, or a predicate "
        f"(a function of the exception returning whether it is an error), not {errors!r}"
    )


#: What ends iteration normally out of a function of this name.
_ITERATION_ENDS: dict[str, type[BaseException]] = {
    "__next__": StopIteration,
    "__anext__": StopAsyncIteration,
}
#: The first lambda decorated without name= under each (function, module) label pair.
_lambdas: dict[tuple[str, str], Any] = {}


def _warn_if_merged(qualname: str, module: str, target: Any) -> None:
    """Warn (at the decoration) when a lambda gets the labels another lambda already has: they
    would share one series."""
    code = getattr(target, "__code__", None)
    if _lambdas.setdefault((qualname, module), code) is not code:
        warnings.warn(
            f"@obskit.red: this lambda is recorded under function={qualname!r}, "
            f"module={module!r}, as another lambda there already is, so their calls share one "
            "series; give it a name of its own with name=...",
            UserWarning,
            stacklevel=4,  # the decoration: _make, then red() or decorate()
        )


def _make(func: F, name: str | None, trace: bool, errors: _Rule) -> F:
    func = _shapes.checked(func, "@obskit.red")
    qualname, module, target = _describe(_underlying(func))
    if name:
        qualname = str(name)
    elif getattr(target, "__name__", None) == "<lambda>":
        _warn_if_merged(qualname, module, target)
    names = _shapes.names_of(func)
    rec = _Recorder(qualname, module, _error_rule(errors, _ITERATION_ENDS.get(names[0])), trace)
    wrapper = _WRAPPERS[_shapes.shape_of(func)](rec, names)
    key = ("red", qualname, module, trace, errors)
    wrapped: F = _shapes.wrap(func, wrapper, key, (_remake, (name, trace, errors)))
    return wrapped


def _remake(func: Any, name: str | None, trace: bool, errors: _Rule) -> Any:
    """``func`` decorated again with these options: how a decorated partial or callable object
    comes back from a pickle."""
    return red(name=name, trace=trace, errors=errors)(func)


_WRAPPERS: dict[_shapes.Shape, Callable[[_Recorder, tuple[str, str]], _shapes.Wrapper]] = {
    "function": _sync,
    "coroutine": _async,
    "generator": _shapes.generator,
    "async_generator": _shapes.async_generator,
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
        errors: which exceptions make ``result="error"``: an exception type, a tuple, list or
            other iterable of them, or a predicate
            (asked about ``Exception`` instances only). Anything else that escapes (a 404
            exception you raise on purpose, cancellation, ``StopIteration`` out of a
            ``__next__``) is recorded as ``result="ok"`` and re-raised unchanged.

    Raises:
        TypeError: at decoration, for something that is not a function (a property, a name
            given positionally) or an ``errors`` that is neither types nor a predicate.
    """
    errors = _checked_errors(errors)
    if isinstance(func, str):
        raise TypeError(
            f"@obskit.red got the string {func!r} where it takes a function: to set the "
            f"function label, pass it as name=, as in @obskit.red(name={func!r})"
        )
    if func is not None:
        return _make(func, name, trace, errors)

    def decorate(f: F) -> F:
        return _make(f, name, trace, errors)

    return decorate
