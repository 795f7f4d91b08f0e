"""Findings of an adversarial review of obskit's decorators (``@obskit.red`` and a USE tracker
used as one), each pinned by a test.

What is decorated is what applications write: async generators abandoned at loop shutdown,
properties, names given positionally, ``errors=`` predicates, async functions hidden behind a
plain ``functools.wraps`` decorator, decorations applied twice, lambdas, partialmethods,
iterator classes, implicit classmethods, pickled partials. Every assertion reads the real
metric samples (``obskit.testing``) or the spans captured by ``obskit.testing.capture()``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import pickle
import sys
import types
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace

import obskit
from obskit.metrics.use import use
from obskit.testing import capture, get_sample_value, samples

MODULE = __name__
ERROR = 2  # OTLP Status.STATUS_CODE_ERROR


def calls(function: str, result: str, module: str = MODULE) -> float | None:
    """function_calls_total of one function and result."""
    return get_sample_value(
        "function_calls_total", {"function": function, "module": module, "result": result}
    )


def outcomes(function: str, module: str = MODULE) -> tuple[float | None, float | None]:
    """(ok calls, error calls) of one function."""
    return calls(function, "ok", module), calls(function, "error", module)


def durations(function: str, suffix: str = "count") -> float | None:
    """function_duration_seconds_<suffix> of one function."""
    return get_sample_value(
        f"function_duration_seconds_{suffix}", {"function": function, "module": MODULE}
    )


def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An application's plain decorator: a sync wrapper that returns what ``fn`` returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def add(a: int, b: int = 2) -> int:
    return a + b


class Adder:
    """A callable object (module level: pickled by reference to its class)."""

    def __call__(self, a: int) -> int:
        return a + 1


# -- async generators at loop shutdown ---------------------------------------------------------


def _abandon_at_shutdown(
    deco: Callable[[Any], Any], slow_cleanup: bool
) -> tuple[list[Any], list[str]]:
    """Run a decorated async generator to its second item, break, keep it referenced and let
    ``asyncio.run()`` finalise it: (what the loop's exception handler and the unraisable hook
    saw, the cleanups that ran)."""
    reported: list[Any] = []
    cleaned: list[str] = []
    kept: list[Any] = []

    @deco
    async def rows() -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            if slow_cleanup:
                await asyncio.sleep(0.01)  # an async cleanup: a cursor closed, a connection freed
            cleaned.append("cleaned")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context.get("exception"))
        )
        kept.append(rows())
        async for row in kept[0]:
            if row == 1:
                break  # abandoned: no aclose()

    previous_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: reported.append(unraisable.exc_value)
    try:
        asyncio.run(main())
        kept.clear()
        gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    return reported, cleaned


# A bug this test found, since fixed: obskit/_shapes.py started the wrapped async generator
# under the loop's asyncgen hooks, so asyncio.run()'s shutdown_asyncgens() closed it and its
# wrapper concurrently: the wrapper forwarded its close into a generator already running
# ("athrow(): asynchronous generator is already running", the call counted as an error) or
# already closed ("async generator ignored GeneratorExit", the call never counted).
@pytest.mark.parametrize("slow_cleanup", [True, False], ids=["async_cleanup", "sync_cleanup"])
def test_red_async_generator_left_open_at_shutdown_closes_once_as_ok(slow_cleanup: bool) -> None:
    """Closed by the loop as the undecorated generator is: nothing reported, the cleanup run
    once, the call counted once, as ok (an early close is not an error)."""
    reported, cleaned = _abandon_at_shutdown(obskit.red, slow_cleanup)
    assert ([], ["cleaned"]) == (reported, cleaned)
    assert (1.0, 0.0) == outcomes("_abandon_at_shutdown.<locals>.rows")


# A bug this test found, since fixed: the same, with a USE tracker as the decorator: the loop
# reported "aclose(): asynchronous generator is already running".
@pytest.mark.parametrize("slow_cleanup", [True, False], ids=["async_cleanup", "sync_cleanup"])
def test_use_async_generator_left_open_at_shutdown_closes_once(slow_cleanup: bool) -> None:
    """The loop closes it cleanly and its unit is released."""
    db = use("review-agen-shutdown", capacity=4)
    reported, cleaned = _abandon_at_shutdown(db, slow_cleanup)
    assert ([], ["cleaned"], 0) == (reported, cleaned, db.in_use)


# A bug this test found, since fixed: the same, with a loop in each of several threads.
def test_async_generators_left_open_in_loops_of_several_threads_close_cleanly() -> None:
    """The hooks unset while a wrapped generator starts are its own thread's: loops shutting
    down in four threads at once each close their generator cleanly, counted once each."""
    import threading

    reported: list[Any] = []
    cleaned: list[int] = []
    barrier = threading.Barrier(4)

    @obskit.red(name="review_threaded_rows")
    async def rows(n: int) -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            await asyncio.sleep(0.01)
            cleaned.append(n)

    def run(n: int) -> None:
        kept: list[Any] = []

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(
                lambda loop, context: reported.append(context.get("exception"))
            )
            kept.append(rows(n))
            barrier.wait(10)
            async for row in kept[0]:
                if row == 3:
                    break

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert ([], [0, 1, 2, 3]) == (reported, sorted(cleaned))
    assert (4.0, 0.0) == outcomes("review_threaded_rows")


def test_an_async_generator_dropped_while_its_loop_runs_is_closed_once() -> None:
    """Abandoned and garbage-collected before shutdown, it is closed by the loop through its
    wrapper: its async cleanup runs once and the call counts once, as ok."""
    reported: list[Any] = []
    cleaned: list[str] = []

    @obskit.red(name="review_dropped_rows")
    async def rows() -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            await asyncio.sleep(0.01)
            cleaned.append("cleaned")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context.get("exception"))
        )
        agen = rows()
        async for row in agen:
            if row == 1:
                break
        del agen
        gc.collect()
        await asyncio.sleep(0.05)  # the loop's finalizer runs aclose() as a task
        assert ["cleaned"] == cleaned

    asyncio.run(main())
    assert ([], ["cleaned"], (1.0, 0.0)) == (reported, cleaned, outcomes("review_dropped_rows"))


def test_starting_a_decorated_async_generator_leaves_the_loops_hooks_in_place() -> None:
    """The wrapped generator is started without the loop's asyncgen hooks, which are the
    thread's own and are put back straight after: async generators started later are still
    finalised by the loop."""

    @obskit.red
    async def rows() -> AsyncIterator[int]:
        yield 1

    async def main() -> tuple[Any, Any]:
        before = sys.get_asyncgen_hooks()
        agen = rows()
        await agen.__anext__()
        after = sys.get_asyncgen_hooks()
        await agen.aclose()
        return before, after

    before, after = asyncio.run(main())
    assert before.firstiter is not None
    assert (before.firstiter, before.finalizer) == (after.firstiter, after.finalizer)


# A bug this test found, since fixed: obskit/_shapes.py forwarded aclose() into a wrapped async
# generator that had already finished; on 3.11 athrow() on it returns None, so the wrapper
# yielded again after GeneratorExit (RuntimeError "async generator ignored GeneratorExit").
def test_closing_a_wrapper_whose_generator_already_finished_is_clean() -> None:
    """The wrapper's close is not forwarded into a finished generator: it closes cleanly and
    the call counts once, as ok."""

    @obskit.red
    async def rows() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def main() -> None:
        agen: Any = rows()
        await agen.__anext__()
        inner = agen.ag_frame.f_locals["agen"]  # the wrapped generator, closed behind it
        await inner.aclose()
        await agen.aclose()

    asyncio.run(main())
    assert (1.0, 0.0) == outcomes(
        "test_closing_a_wrapper_whose_generator_already_finished_is_clean.<locals>.rows"
    )


# -- only functions are decorated --------------------------------------------------------------


# A bug this test found, since fixed: @obskit.red above @property / @functools.cached_property
# wrapped the descriptor: every read returned a wrapt proxy of the value (json.dumps refused it)
# and was counted under function="property", module="builtins".
@pytest.mark.parametrize(
    ("descriptor", "kind"),
    [(property, "property"), (functools.cached_property, "cached_property")],
)
def test_red_above_a_property_is_refused_at_decoration(descriptor: Any, kind: str) -> None:
    """TypeError when the class is defined, saying to put @obskit.red below the property."""
    with pytest.raises(TypeError, match=f"put @obskit.red below @{kind}"):

        class Account:
            @obskit.red
            @descriptor
            def total(self) -> int:
                return 1

    assert [] == samples("function_calls_total")


# A bug this test found, since fixed: @obskit.red("charge") (the name given positionally)
# wrapped the string "charge"; the TypeError came at import, from calling the proxy of a str,
# and was counted as a failed call of function="str".
def test_a_name_given_in_place_of_the_function_is_refused() -> None:
    """TypeError at once, saying to pass the name as name=."""
    with pytest.raises(TypeError, match=r"name='charge'"):
        obskit.red("charge")  # type: ignore[type-var]
    assert [] == samples("function_calls_total")


# A bug this test found, since fixed: obskit.red(3) and a USE tracker given a property, a string
# or a number wrapped them silently; the error came at the first use.
@pytest.mark.parametrize(
    "target",
    [property(lambda self: 1), functools.cached_property(lambda self: 1), "charge", 3],
    ids=["property", "cached_property", "str", "int"],
)
@pytest.mark.parametrize("decorator", ["red", "use"])
def test_what_is_not_callable_is_refused_at_decoration(target: Any, decorator: str) -> None:
    """TypeError at decoration, from @obskit.red and from a USE tracker alike."""
    deco: Callable[[Any], Any] = (
        obskit.red if decorator == "red" else use("review-not-callable", capacity=2)
    )
    with pytest.raises(TypeError, match=r"below @|not 'charge'|not 3|name="):
        deco(target)


class method_of:
    """A third party's method descriptor (SQLAlchemy's hybrid_method is one): not callable
    itself, it gives a method when looked up."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __get__(self, instance: Any, owner: type) -> Any:
        return types.MethodType(self.func, owner if instance is None else instance)


def test_method_descriptors_are_still_decorated() -> None:
    """classmethod, staticmethod, partialmethod, singledispatchmethod and other method
    descriptors are not callable (or not as methods) themselves, and are still decorated."""

    class Shop:
        def _set(self, value: int, flag: bool) -> tuple[int, bool]:
            return value, flag

        @obskit.red
        @method_of
        def hybrid(self, value: int) -> int:
            return value

        on = obskit.red(functools.partialmethod(_set, flag=True))

        @obskit.red
        @classmethod
        def make(cls) -> str:
            return cls.__name__

        @obskit.red
        @staticmethod
        def tax(total: float) -> float:
            return total * 0.2

        @obskit.red
        @functools.singledispatchmethod
        def show(self, value: object) -> str:
            return "object"

        @show.register
        def _(self, value: int) -> str:
            return "int"

    shop = Shop()
    assert ((1, True), "Shop", 2.0, "int", 5) == (
        shop.on(1),
        Shop.make(),
        Shop.tax(10.0),
        shop.show(1),
        shop.hybrid(5),
    )
    prefix = "test_method_descriptors_are_still_decorated.<locals>.Shop"
    assert [1.0] * 4 == [
        calls(f"{prefix}.{name}", "ok") for name in ("_set", "make", "tax", "show")
    ]
    assert 5.0 == sum(
        v for labels, v in samples("function_calls_total") if labels["result"] == "ok"
    )


# -- errors= -----------------------------------------------------------------------------------


# A bug this test found, since fixed: obskit/metrics/red.py _Recorder.failed asked an errors=
# predicate about asyncio.CancelledError: the docs' own predicate (status >= 500, default 500)
# counted every cancelled call as an error and marked its span ERROR.
def test_the_errors_predicate_is_not_asked_about_cancellation() -> None:
    """Cancellation is ok, the predicate is not asked, the span's status is left unset."""
    asked: list[BaseException] = []

    def is_error(exc: BaseException) -> bool:
        asked.append(exc)
        return getattr(exc, "status", 500) >= 500

    @obskit.red(trace=True, errors=is_error)
    async def handler() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture(sampler="always_on") as cap:
        asyncio.run(main())
        spans = cap.spans()
    name = "test_the_errors_predicate_is_not_asked_about_cancellation.<locals>.handler"
    assert ([], (1.0, 0.0)) == (asked, outcomes(name))
    assert [0] == [span.status.code for span in spans]


# A bug this test found, since fixed: the same for KeyboardInterrupt, SystemExit and
# GeneratorExit escaping a sync function: a predicate saying True made them errors.
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_the_errors_predicate_is_not_asked_about_base_exceptions(
    exc_type: type[BaseException],
) -> None:
    """They keep the default treatment (ok) whatever the predicate would say."""
    asked: list[BaseException] = []

    @obskit.red(errors=lambda exc: asked.append(exc) or True)
    def work() -> None:
        raise exc_type()

    with pytest.raises(exc_type):
        work()
    name = "test_the_errors_predicate_is_not_asked_about_base_exceptions.<locals>.work"
    assert ([], (1.0, 0.0)) == (asked, outcomes(name))


def test_cancellation_named_in_errors_still_counts() -> None:
    """Exception types given to errors= match as given: CancelledError named is an error."""

    @obskit.red(errors=(asyncio.CancelledError,))
    async def handler() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (0.0, 1.0) == outcomes("test_cancellation_named_in_errors_still_counts.<locals>.handler")


# A bug this test found, since fixed: obskit/metrics/red.py took any errors= value: a string, None,
# an exception instance, a tuple holding a string or 42 made every exception an error (the
# TypeError of calling or isinstance-checking it was taken for a predicate that raised).
@pytest.mark.parametrize(
    "errors",
    ["ValueError", None, (ValueError, "TimeoutError"), ValueError("x"), 42, int],
    ids=["str", "None", "tuple_with_str", "instance", "int", "non_exception_type"],
)
def test_errors_that_are_neither_types_nor_a_predicate_are_refused(errors: Any) -> None:
    """TypeError at decoration, naming what errors= takes."""
    with pytest.raises(TypeError, match="errors= takes an exception type"):
        obskit.red(errors=errors)


def test_errors_given_as_a_list_or_a_set_of_types_still_work() -> None:
    """A list, a set or any other iterable of exception types is taken as a tuple."""

    @obskit.red(name="review_errors_list", errors=[KeyError])
    def listed(exc: Exception) -> None:
        raise exc

    @obskit.red(name="review_errors_set", errors={KeyError})
    def in_a_set(exc: Exception) -> None:
        raise exc

    @obskit.red(name="review_errors_iterable", errors=(t for t in [KeyError]))
    def from_a_generator(exc: Exception) -> None:
        raise exc

    for work in (listed, in_a_set, from_a_generator):
        for exc in (KeyError("k"), ValueError("v")):
            with pytest.raises(type(exc)):
                work(exc)
    assert [(1.0, 1.0)] * 3 == [
        outcomes("review_errors_list"),
        outcomes("review_errors_set"),
        outcomes("review_errors_iterable"),
    ]


def test_use_takes_exception_types_in_any_iterable() -> None:
    """``timeouts=``/``errors=`` of a USE tracker: a type, or a tuple, list, set or any other
    iterable of types, held as a tuple; a str is refused, not split into letters."""
    tracker = use("review-iterables", errors=iter([KeyError]), timeouts={TimeoutError: 1}.keys())
    assert ((KeyError,), (TimeoutError,)) == (tracker._errors, tracker._timeouts)
    assert use("review-iterables", errors=[KeyError], timeouts=TimeoutError) is tracker
    with pytest.raises(TypeError, match="expected exception types, got 'KeyError'"):
        use("review-iterables-str", errors="KeyError")


# -- the end of iteration ----------------------------------------------------------------------


class Countdown:
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Countdown:
        return self

    @obskit.red
    def __next__(self) -> int:
        if self.n == 0:
            raise StopIteration
        self.n -= 1
        return self.n


class AsyncCountdown:
    def __init__(self, n: int) -> None:
        self.n = n

    def __aiter__(self) -> AsyncCountdown:
        return self

    @obskit.red
    async def __anext__(self) -> int:
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        return self.n


# A bug this test found, since fixed: obskit/metrics/red.py counted the StopIteration that ends
# a decorated __next__'s iteration as an error: every loop over the iterator failed once.
def test_stopiteration_out_of_a_decorated_next_is_ok() -> None:
    """The normal end of iteration (Python's data model) is not an error."""
    assert [2, 1, 0] == list(Countdown(3))
    assert (4.0, 0.0) == outcomes("Countdown.__next__")


# A bug this test found, since fixed: the same for StopAsyncIteration out of __anext__.
def test_stopasynciteration_out_of_a_decorated_anext_is_ok() -> None:
    """The normal end of async iteration is not an error."""

    async def main() -> list[int]:
        return [i async for i in AsyncCountdown(3)]

    assert [2, 1, 0] == asyncio.run(main())
    assert (4.0, 0.0) == outcomes("AsyncCountdown.__anext__")


def test_stopiteration_elsewhere_or_named_in_errors_still_counts() -> None:
    """Out of any other function a StopIteration is a leak (an empty iterator's next()) and an
    error; errors= naming StopIteration makes a __next__'s end one too."""

    @obskit.red
    def first(items: list[int]) -> int:
        return next(iter(items))

    class Strict:
        @obskit.red(errors=(StopIteration,))
        def __next__(self) -> int:
            raise StopIteration

    with pytest.raises(StopIteration):
        first([])
    with pytest.raises(StopIteration):
        next(Strict())  # type: ignore[call-overload]
    prefix = "test_stopiteration_elsewhere_or_named_in_errors_still_counts.<locals>"
    assert [(0.0, 1.0)] * 2 == [outcomes(f"{prefix}.first"), outcomes(f"{prefix}.Strict.__next__")]


# -- an async function behind a plain decorator ------------------------------------------------


# A bug this test found, since fixed: obskit/metrics/red.py's sync wrapper, above a plain
# functools.wraps decorator over an async def, timed only the coroutine's creation and counted
# the call ok before it had run: its exceptions were never errors.
def test_an_async_function_behind_a_plain_decorator_is_timed_until_it_finishes() -> None:
    """Its duration covers the await and what it raises counts; the decorated function is
    still not a coroutine function (as undecorated)."""

    @obskit.red
    @logged
    async def slow_fail() -> None:
        await asyncio.sleep(0.05)
        raise ValueError("boom")

    assert not inspect.iscoroutinefunction(slow_fail)
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(slow_fail())
    name = "test_an_async_function_behind_a_plain_decorator_is_timed_until_it_finishes.<locals>"
    assert (0.0, 1.0) == outcomes(f"{name}.slow_fail")
    assert (durations(f"{name}.slow_fail", "sum") or 0.0) >= 0.05


# A bug this test found, since fixed: with trace=True the span ended when the coroutine was made:
# spans started inside the coroutine were not its children and its error was not marked.
def test_a_traced_hidden_coroutine_has_its_span_current_while_it_runs() -> None:
    """The span is current while the coroutine runs (not in the caller between the call and
    the await) and is marked with its error."""
    seen: list[str] = []

    @obskit.red(trace=True)
    @logged
    async def fetch() -> None:
        with obskit.tracer_provider().get_tracer("review").start_as_current_span("inner"):
            await asyncio.sleep(0)
        raise ValueError("boom")

    async def main() -> None:
        coro = fetch()
        seen.append(str(getattr(trace.get_current_span(), "name", "<none>")))
        with pytest.raises(ValueError, match="boom"):
            await coro

    with capture(sampler="always_on") as cap:
        asyncio.run(main())
        spans = {span.name: span for span in cap.spans()}
    outer = spans[f"{MODULE}.{fetch.__qualname__}"]
    assert ["<none>"] == seen  # the caller's context, between the call and the await
    assert outer.span_id == spans["inner"].parent_span_id
    assert ERROR == outer.status.code


# A bug this test found, since fixed: obskit/metrics/use.py's sync wrapper released its unit
# when the hidden coroutine was made: in_use read 0 while the coroutine held the resource.
def test_a_use_tracker_holds_its_unit_while_a_hidden_coroutine_runs() -> None:
    """One unit in use while the coroutine runs, none after; its listed errors count."""
    db = use("review-hidden-coroutine", capacity=2, errors=(ConnectionError,))
    inside: list[int] = []

    @db
    @logged
    async def query() -> None:
        await asyncio.sleep(0)
        inside.append(db.in_use)
        raise ConnectionError("reset")

    with pytest.raises(ConnectionError):
        asyncio.run(query())
    failures = get_sample_value(
        "resource_errors_total", {"resource": "review-hidden-coroutine", "reason": "failure"}
    )
    assert ([1], 0, 1.0) == (inside, db.in_use, failures)


@pytest.mark.parametrize("decorator", ["red", "use"])
def test_a_hidden_coroutine_never_started_leaves_no_warning(decorator: str) -> None:
    """A task cancelled before its first step or a coroutine closed unawaited warns about
    nothing, as undecorated; one dropped unawaited warns once, naming the function."""
    deco: Callable[[Any], Any] = (
        obskit.red if decorator == "red" else use("review-hidden-start", capacity=2)
    )

    @deco
    @logged
    async def work() -> None:
        await asyncio.sleep(0)

    async def cancelled_first() -> None:
        task = asyncio.create_task(work())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(cancelled_first())
        work().close()
        gc.collect()
        quiet = [str(w.message) for w in caught]
        work()  # never awaited
        gc.collect()
        dropped = [str(w.message) for w in caught[len(quiet) :]]
    assert ([], [f"coroutine '{work.__qualname__}' was never awaited"]) == (quiet, dropped)


# -- decorated twice ---------------------------------------------------------------------------


# A bug this test found, since fixed: obskit.red(obskit.red(f)) recorded every call twice under
# the same labels (ok 2 and two durations for one call).
def test_decorating_twice_with_the_same_options_records_once() -> None:
    """The second decoration returns the first unchanged."""

    def f(x: int) -> int:
        return x

    once = obskit.red(f)
    assert once is obskit.red(once)
    assert 1 == obskit.red(obskit.red(f))(1)
    name = "test_decorating_twice_with_the_same_options_records_once.<locals>.f"
    assert ((1.0, 0.0), 1.0) == (outcomes(name), durations(name))


def test_decorating_twice_under_another_name_records_both() -> None:
    """Another name= is another series: both are recorded."""

    def f() -> None:
        pass

    obskit.red(name="review_outer")(obskit.red(f))()
    name = "test_decorating_twice_under_another_name_records_both.<locals>.f"
    assert [(1.0, 0.0)] * 2 == [outcomes(name), outcomes("review_outer")]


# -- labels: partialmethod, singledispatchmethod, lambdas ---------------------------------------


# A bug this test found, since fixed: obskit/metrics/red.py labelled every partialmethod
# function="partialmethod", module="functools", and every singledispatchmethod
# "singledispatchmethod": unrelated methods of every module merged into one series.
def test_partialmethod_and_singledispatchmethod_are_labelled_after_their_function() -> None:
    """Labelled after the function they call, in its module."""

    class Switch:
        def _set(self, value: int, flag: bool) -> tuple[int, bool]:
            return value, flag

        on = obskit.red(functools.partialmethod(_set, flag=True))

        @obskit.red
        @functools.singledispatchmethod
        def show(self, value: object) -> str:
            return "object"

    Switch().on(1)
    Switch().show("x")
    prefix = (
        "test_partialmethod_and_singledispatchmethod_are_labelled_after_their_function"
        ".<locals>.Switch"
    )
    assert [(1.0, 0.0)] * 2 == [outcomes(f"{prefix}._set"), outcomes(f"{prefix}.show")]
    assert not [
        labels for labels, _ in samples("function_calls_total") if labels["module"] == "functools"
    ]


# A bug this test found, since fixed: two different lambdas of one scope decorated without name=
# were merged silently into function="<lambda>".
def test_a_second_lambda_under_the_same_labels_warns_at_its_decoration() -> None:
    """A UserWarning pointing at the decoration, saying to give name=."""
    square = obskit.red(lambda x: x * x)
    with pytest.warns(UserWarning, match="name=") as caught:
        increment = obskit.red(lambda x: x + 1)  # the line the warning points at
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    assert [(__file__, line)] == [(w.filename, w.lineno) for w in caught]
    assert (4, 3) == (square(2), increment(2))


def test_one_lambda_or_a_named_one_does_not_warn() -> None:
    """One lambda alone, the same lambda decorated again (a loop) or one given name= records a
    series of its own: no warning (the suite turns warnings into errors)."""
    for i in range(3):
        obskit.red(lambda i=i: i)()
    obskit.red(name="review_named_lambda")(lambda: 2)()
    name = "test_one_lambda_or_a_named_one_does_not_warn.<locals>.<lambda>"
    assert [(3.0, 0.0), (1.0, 0.0)] == [outcomes(name), outcomes("review_named_lambda")]


# -- names of the objects a decorated function returns -----------------------------------------


async def fetch_user() -> int:
    return 1


def rows() -> Iterator[int]:
    yield 1


async def events() -> AsyncIterator[int]:
    yield 1


# A bug this test found, since fixed: the coroutine, generator and async generator a decorated
# function returned were named after obskit's internals ("_async.<locals>.wrapper",
# "_run_generator", "_run_async_generator"), in their repr and in "never awaited" warnings.
@pytest.mark.parametrize("function", [fetch_user, rows, events], ids=lambda f: f.__name__)
@pytest.mark.parametrize("decorator", ["red", "use"])
def test_what_a_decorated_function_returns_carries_its_names(
    function: Callable[[], Any], decorator: str
) -> None:
    """``__name__``, ``__qualname__`` and the repr are the undecorated object's."""
    deco: Callable[[Any], Any] = (
        obskit.red if decorator == "red" else use("review-names", capacity=2)
    )
    made = deco(function)()
    try:
        assert (function.__name__, function.__qualname__) == (made.__name__, made.__qualname__)
        assert repr(made).startswith(f"<{type(made).__name__} object {function.__qualname__} at")
    finally:
        if inspect.iscoroutine(made):
            made.close()


def test_a_never_awaited_decorated_coroutine_is_named_in_the_warning() -> None:
    """The "never awaited" warning names the function, not obskit's wrapper."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obskit.red(fetch_user)()
        gc.collect()
    assert ["coroutine 'fetch_user' was never awaited"] == [str(w.message) for w in caught]


# -- implicit classmethods ---------------------------------------------------------------------


# A bug this test found, since fixed: a decorated __init_subclass__ / __class_getitem__ was no
# longer the implicit classmethod Python makes of the plain function: defining a subclass raised
# "missing 1 required positional argument: 'cls'", and so did Plugin[int].
@pytest.mark.parametrize("decorator", ["red", "use"])
def test_decorated_init_subclass_and_class_getitem_stay_implicit_classmethods(
    decorator: str,
) -> None:
    """They behave as undecorated, and (with @obskit.red) are counted."""
    deco: Callable[[Any], Any] = (
        obskit.red if decorator == "red" else use("review-implicit", capacity=2)
    )
    registry: list[str] = []

    class Plugin:
        @deco
        def __init_subclass__(cls, **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)
            registry.append(cls.__name__)

        @deco
        def __class_getitem__(cls, item: Any) -> str:
            return f"{cls.__name__}[{item.__name__}]"

    class Csv(Plugin):
        pass

    assert (["Csv"], "Plugin[int]", "Csv[str]") == (registry, Plugin[int], Csv[str])
    if decorator == "red":
        prefix = (
            "test_decorated_init_subclass_and_class_getitem_stay_implicit_classmethods"
            ".<locals>.Plugin"
        )
        assert [(1.0, 0.0), (2.0, 0.0)] == [
            outcomes(f"{prefix}.__init_subclass__"),
            outcomes(f"{prefix}.__class_getitem__"),
        ]


def test_an_explicit_classmethod_above_a_decorated_init_subclass_still_works() -> None:
    """@classmethod above the decorator keeps working, on this Python and as Python 3.13+
    calls a classmethod (the function called with the class first)."""
    registry: list[str] = []

    class Plugin:
        @classmethod
        @obskit.red
        def __init_subclass__(cls, **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)
            registry.append(cls.__name__)

        @classmethod
        @obskit.red
        def __class_getitem__(cls, item: Any) -> str:
            return f"{cls.__name__}[{item.__name__}]"

    class Csv(Plugin):
        pass

    as_313 = types.MethodType(Plugin.__dict__["__class_getitem__"].__func__, Csv)
    assert (["Csv"], "Plugin[int]", "Csv[int]") == (registry, Plugin[int], as_313(int))


# -- pickling ----------------------------------------------------------------------------------


# A bug this test found, since fixed: obskit/_shapes.py pickled a decorated function by its
# __qualname__ only: a decorated functools.partial or callable object (which has none) raised
# AttributeError, where the undecorated one pickles.
@pytest.mark.parametrize("decorator", ["red", "use"])
def test_a_decorated_partial_or_callable_object_pickles_by_value(decorator: str) -> None:
    """It comes back decorated the same way: it runs, and its calls are recorded."""
    tracker = use("review-pickle", capacity=2)
    deco: Callable[[Any], Any] = obskit.red if decorator == "red" else tracker
    part = deco(functools.partial(add, 1))
    obj = deco(Adder())
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        part_back = pickle.loads(pickle.dumps(part, protocol))
        obj_back = pickle.loads(pickle.dumps(obj, protocol))
        assert (4, 4) == (part_back(3), obj_back(3))
        assert (type(part), type(obj)) == (type(part_back), type(obj_back))
    if decorator == "red":
        assert [(3.0, 0.0)] * 2 == [outcomes("add"), outcomes("Adder")]


# -- bound methods held weakly ------------------------------------------------------------------


class Listener:
    """A signal receiver with a decorated method."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    @obskit.red
    def on_event(self, sender: object, **kwargs: object) -> str:
        self.seen.append(sender)
        return "handled"

    @classmethod
    @obskit.red
    def on_class_event(cls, sender: object, **kwargs: object) -> str:
        return cls.__name__

    @obskit.red  # the decorator above @classmethod, as docs/metrics.md shows it
    @classmethod
    def on_class_event_above(cls, sender: object, **kwargs: object) -> str:
        return cls.__name__


def in_use(resource: str) -> float | None:
    """resource_in_use of one USE tracker: 1 inside a decorated call of it."""
    return get_sample_value("resource_in_use", {"resource": resource})


# A bug this test found, since fixed: weakref.WeakMethod rebuilds a method as
# type(meth)(meth.__func__, meth.__self__), and the bound wrapper raised "FunctionWrapperBase()
# missing required argument 'wrapper'"; its __func__ was the undecorated function.
@pytest.mark.parametrize("decorator", ["red", "use"])
def test_a_decorated_method_held_by_weakmethod_comes_back_decorated(decorator: str) -> None:
    """``WeakMethod(obj.m)()`` is ``obj.m`` again (equal, same type) and its calls are recorded,
    as are those made through ``obj.m.__func__``; it dies with the object."""
    tracker = use("review-weakmethod", capacity=2)

    class Receiver:
        def handle(self, value: int) -> tuple[int, float | None]:
            return value + 1, in_use("review-weakmethod")

    deco: Callable[[Any], Any] = obskit.red if decorator == "red" else tracker
    Receiver.handle = deco(Receiver.__dict__["handle"])  # type: ignore[method-assign]
    obj = Receiver()
    ref = weakref.WeakMethod(obj.handle)
    back = ref()
    assert back is not None
    assert (type(back), back.__self__, back.__func__) == (
        type(obj.handle),
        obj,
        Receiver.__dict__["handle"],
    )
    unit = 1.0 if decorator == "use" else None  # held by the tracker during the call
    assert (back == obj.handle, back(1), obj.handle.__func__(obj, 2)) == (
        True,
        (2, unit),
        (3, unit),
    )
    if decorator == "red":
        assert (2.0, 0.0) == outcomes(
            "test_a_decorated_method_held_by_weakmethod_comes_back_decorated.<locals>"
            ".Receiver.handle"
        )
    del back, obj
    gc.collect()
    assert ref() is None


def test_a_weakmethod_of_a_classmethod_above_the_decorator_comes_back_decorated() -> None:
    """``@classmethod`` over ``@obskit.red``: bound to the class, rebuilt bound to it."""
    back = weakref.WeakMethod(Listener.on_class_event)()
    assert back is not None
    assert ("Listener", Listener) == (back("s"), back.__self__)
    assert (1.0, 0.0) == outcomes("Listener.on_class_event")


# Found by a review of the fix above, since fixed: with the decorator above @classmethod the
# bound method's __func__ was the undecorated function, so WeakMethod (a Django signal) raised
# TypeError into the sender (obskit/_shapes.py, _BoundDecorated.__func__).
def test_a_weakmethod_of_the_decorator_above_classmethod_comes_back_decorated() -> None:
    import django.dispatch

    bound = Listener.on_class_event_above
    back = weakref.WeakMethod(bound)()
    assert back is not None
    assert ("Listener", Listener) == (back("s"), back.__self__)
    assert "Listener" == bound.__func__(Listener, "direct")  # callable, as a method's __func__
    assert bound.__func__ is Listener.on_class_event_above.__func__  # one: held weakly
    signal = django.dispatch.Signal()
    signal.connect(Listener.on_class_event_above)
    assert [(Listener.on_class_event_above, "Listener")] == signal.send(sender="d")
    assert (3.0, 0.0) == outcomes("Listener.on_class_event_above")


@pytest.mark.parametrize("weak", [True, False])
def test_a_decorated_method_receives_django_and_blinker_signals(weak: bool) -> None:
    """Connected as a bound method (held weakly by default), it receives the signal and its
    calls are recorded; disconnecting by the same bound method works."""
    import blinker
    import django.dispatch

    listener = Listener()
    django_signal = django.dispatch.Signal()
    blinker_signal = blinker.Signal()
    django_signal.connect(listener.on_event, weak=weak)
    blinker_signal.connect(listener.on_event, weak=weak)
    assert [(listener.on_event, "handled")] == django_signal.send(sender="d")
    assert [(listener.on_event, "handled")] == blinker_signal.send("b")
    assert (["d", "b"], (2.0, 0.0)) == (listener.seen, outcomes("Listener.on_event"))
    assert django_signal.disconnect(listener.on_event)
    blinker_signal.disconnect(listener.on_event)
    assert ([], []) == (django_signal.send(sender="d"), blinker_signal.send("b"))


def test_a_bound_decorated_method_pickles_and_copies_as_a_bound_method() -> None:
    """Pickled by reference to its owner's attribute; a copy is the same bound method, a deep
    copy is bound to a deep copy of its instance, as for an undecorated method."""
    import copy

    bound = Listener.on_class_event
    assert pickle.loads(pickle.dumps(bound)) == bound
    listener = Listener()
    assert copy.copy(listener.on_event) == listener.on_event
    deep = copy.deepcopy(listener.on_event)
    assert (deep("x"), listener.seen, type(deep)) == ("handled", [], type(listener.on_event))
    assert (deep.__self__ is not listener, deep.__self__.seen) == (True, ["x"])
