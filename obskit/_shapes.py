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

import copy
import functools
import inspect
import sys
import types
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry.context import Context

__all__ = [
    "CallHooks",
    "Decorated",
    "Pending",
    "Shape",
    "Wrapper",
    "async_generator",
    "checked",
    "generator",
    "named",
    "names_of",
    "shape_of",
    "wrap",
]

Shape = Literal["function", "coroutine", "generator", "async_generator"]
_Function = TypeVar("_Function", bound=Callable[..., Any])
#: A ``wrapt`` wrapper: ``wrapper(wrapped, instance, args, kwargs)``.
Wrapper = Callable[[Callable[..., Any], Any, Any, Any], Any]


#: Names Python makes classmethods of by itself, but only for a plain function.
_IMPLICIT_CLASSMETHODS = frozenset({"__init_subclass__", "__class_getitem__"})


def _property_like(func: Any) -> bool:
    """Whether ``func`` is a property of some kind: its class's name says so (Django's and
    SQLAlchemy's have no common base with the standard library's)."""
    if isinstance(func, (property, functools.cached_property)):
        return True
    return type(func).__name__.lower().endswith("property")


def checked(func: Any, decorator: str) -> Any:
    """``func`` as ``decorator`` should wrap it, refused here, at decoration, when it cannot be
    called: a wrapped property would hand out a proxy of its value, and a wrapped number would
    fail at every call. A descriptor that gives a method (classmethod, staticmethod,
    ``functools.partialmethod``, ``functools.singledispatchmethod``...) is taken. A plain
    ``__init_subclass__``/``__class_getitem__`` is made the classmethod Python would make of it
    undecorated.

    Raises:
        TypeError: ``func`` is a property, or neither callable nor a descriptor.
    """
    if not callable(func):
        kind = type(func).__name__
        if _property_like(func):
            raise TypeError(
                f"{decorator} cannot wrap a {kind} object: put {decorator} below @{kind}, "
                "on the function it wraps"
            )
        if not hasattr(type(func), "__get__"):
            raise TypeError(
                f"{decorator} decorates functions, methods, classmethods and staticmethods, "
                f"not {func!r} ({kind})"
            )
    if type(func) is types.FunctionType and func.__name__ in _IMPLICIT_CLASSMETHODS:
        return _ImplicitClassmethod(func)
    return func


class _ImplicitClassmethod(classmethod):  # type: ignore[type-arg]
    """The classmethod Python makes of a plain ``__init_subclass__``/``__class_getitem__``, made
    by the decorator, which Python sees in its place. Callable with the class first, for an
    explicit ``@classmethod`` above the decorator (which calls it so on Python 3.13+)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(*args, **kwargs)


def _runs(func: Any) -> Any:
    """What calling ``func`` runs: through bound methods, ``classmethod``/``staticmethod``,
    ``functools.partial``/``partialmethod``/``singledispatchmethod``, and a callable object's
    ``__call__``."""
    target = func
    for _ in range(100):  # bounded: an object's __func__ may be anything, itself included
        inner = getattr(target, "__func__", None)
        if inner is None and isinstance(
            target, (functools.partial, functools.partialmethod, functools.singledispatchmethod)
        ):
            inner = target.func
        if inner is None:
            break
        target = inner
    if not (inspect.isroutine(target) or isinstance(target, type)) and callable(target):
        target = type(target).__call__
    return target


def shape_of(func: Any) -> Shape:
    """What calling ``func`` gives: a value, a coroutine, a generator or an async generator.

    Looks through bound methods, ``classmethod``/``staticmethod`` objects,
    ``functools.partial``/``partialmethod``/``singledispatchmethod``, and at a callable object's
    ``__call__``: an object whose ``async def __call__`` returns a coroutine is timed when
    awaited, not when called.
    """
    target = _runs(func)
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


def names_of(func: Any) -> tuple[str, str]:
    """``(__name__, __qualname__)`` of what ``func`` runs: the names the coroutine or generator
    of an undecorated call carries."""
    target = _runs(func)
    name = getattr(target, "__name__", None)
    if not isinstance(name, str):
        name = type(target).__name__
    qualname = getattr(target, "__qualname__", None)
    return name, qualname if isinstance(qualname, str) else name


def named(function: _Function, names: tuple[str, str]) -> _Function:
    """``function`` (made for one decoration) given ``names``: the coroutine or generator objects
    it makes take them (repr, "never awaited" warnings, task reprs), set once here rather than
    on each object. Its code keeps its own names, so tracebacks still show obskit's frame."""
    function.__name__, function.__qualname__ = names
    return function


def _copy_named(function: Any, names: tuple[str, str]) -> Any:
    """A copy of the module-level ``function`` under ``names`` (see :func:`named`)."""
    copy = types.FunctionType(
        function.__code__,
        function.__globals__,
        names[0],
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return named(copy, names)


if TYPE_CHECKING:
    _BoundBase = wrapt.BoundFunctionWrapper[..., Any]
    _FunctionBase = wrapt.FunctionWrapper[..., Any]
else:
    try:
        _BoundBase = wrapt.BoundFunctionWrapper[..., Any]
        _FunctionBase = wrapt.FunctionWrapper[..., Any]
    except TypeError:  # wrapt before 2.2: its wrappers are not generic
        _BoundBase, _FunctionBase = wrapt.BoundFunctionWrapper, wrapt.FunctionWrapper


_bound_init: Any = _BoundBase.__init__  # wrapt's own: the seven arguments Decorated binds with
_REBUILD: Any = object()


class _BoundDecorated(_BoundBase):
    """A decorated method bound to its instance (or class): pickled as the method is, by
    ``getattr(owner, name)``.

    Like a bound method, it is rebuilt by ``type(meth)(meth.__func__, meth.__self__)``:
    ``weakref.WeakMethod`` does so, hence Django's and blinker's signals with a bound-method
    receiver. Its ``__func__`` is therefore the decorated function, so a call through it is
    recorded too.
    """

    def __init__(
        self,
        wrapped: Any,
        instance: Any,
        wrapper: Any = _REBUILD,
        enabled: Any = None,
        binding: str = "callable",
        parent: Any = None,
        owner: Any = None,
    ) -> None:
        if wrapper is not _REBUILD:  # bound by Decorated.__get__ (wrapt passes all seven)
            _bound_init(self, wrapped, instance, wrapper, enabled, binding, parent, owner)
            return
        # (func, obj), as types.MethodType takes them: bound as obj.func would be.
        if not isinstance(wrapped, Decorated):
            raise TypeError(
                f"{type(self).__name__}(func, obj) takes a function decorated by obskit, "
                f"not {wrapped!r}"
            )
        binding = wrapped._self_binding
        if binding == "classmethod":  # obj is the class: as Class.method binds
            instance, owner = None, instance
        else:
            owner = type(instance)
        function: Any = wrapped.__wrapped__
        descriptor = function.__get__(instance, owner)
        _bound_init(
            self,
            descriptor,
            instance,
            wrapped._self_wrapper,
            wrapped._self_enabled,
            binding,
            wrapped,
            owner,
        )

    @property
    def __func__(self) -> Any:
        """The decorated function of a method bound to an instance (``obj.method``, or a
        ``@classmethod`` above the decorator), as ``weakref.WeakMethod`` takes it to rebuild
        the method. For the decorator above ``@classmethod``, the ``classmethod`` object it
        wraps cannot be called: the classmethod's function, decorated the same way (so that
        ``C.m.__func__(C)`` runs and is recorded, and ``type(m)(m.__func__, C)`` rebinds)."""
        binding = self._self_binding
        if binding == "function" and self._self_instance is not None:
            return self._self_parent
        method: Any = self.__wrapped__
        function = method.__func__
        parent: Any = self._self_parent
        if binding == "classmethod" and isinstance(parent, Decorated):
            # One per decorated classmethod, kept on it: WeakMethod holds it weakly.
            found = getattr(parent, "_self_obskit_function", None)
            if found is None:
                found = Decorated(function, parent._self_wrapper, parent._self_enabled)
                setattr(parent, "_self_obskit_function", found)  # noqa: B010
            return found
        return function

    def __reduce_ex__(self, protocol: Any) -> Any:
        owner = getattr(self, "__self__", None)
        if owner is None:  # looked up on the class: the class owns it
            owner = getattr(self, "_self_owner", None)
        return (getattr, (owner, self.__name__))

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        # As for a bound method: bound to a deep copy of its instance (wrapt's proxy refuses).
        rebuild, args = self.__reduce_ex__(4)
        return rebuild(*copy.deepcopy(args, memo))


class Decorated(_FunctionBase):
    """What obskit's decorators return (``wrapt``'s function wrapper): pickled by reference,
    as the undecorated function is -- by its qualified name, which finds this wrapper again --
    so a decorated function still goes to a process pool or ``multiprocessing``; a decorated
    partial or callable object, which has no name, is pickled by value. Copying gives it back,
    as for a function.

    ``_self_obskit_key`` (what the decoration records, so that the same decoration applied
    again is not applied twice) and ``_self_obskit_remake`` (``(factory, options)``:
    ``factory(wrapped, *options)`` decorates again) are set by the decorator.
    """

    # No annotations in this body: the class's own __annotations__ would hide the function's.
    __bound_function_wrapper__ = _BoundDecorated

    def __reduce_ex__(self, protocol: Any) -> Any:
        try:
            return self.__qualname__
        except AttributeError:
            # A partial or a callable object has no name to be found by: pickled by value and
            # decorated again on loading (the decorator left how in _self_obskit_remake).
            factory, options = getattr(self, "_self_obskit_remake")  # noqa: B009
            return factory, (self.__wrapped__, *options)

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


def wrap(func: Any, wrapper: Wrapper, key: tuple[Any, ...] | None, remake: tuple[Any, ...]) -> Any:
    """``func`` decorated with ``wrapper``, or ``func`` itself when it is already decorated so:
    applying the same decoration twice (``red(red(f))``, a decorator applied by a library and
    again by the application) would record each call twice.

    ``key`` says what a decoration records (decorator, labels, options), None for a decoration
    that is applied again each time; ``remake`` is ``(factory, options)``, with
    ``factory(func, *options)`` decorating again (pickling).
    """
    if key is not None and getattr(func, "_self_obskit_key", None) == key:
        return func
    decorated = Decorated(func, wrapper)
    # setattr: Decorated declares no attributes (see its class body); wrapt keeps _self_*
    # names on the wrapper itself, not on the function.
    setattr(decorated, "_self_obskit_key", key)  # noqa: B010
    setattr(decorated, "_self_obskit_remake", remake)  # noqa: B010
    return decorated


class Pending:
    """A coroutine handed to the coroutine a decorator returns in its place, closed when that
    one is done with it.

    That one may never run: a task cancelled before its first step, a coroutine closed or
    dropped unawaited. The coroutine it holds would then warn "never awaited" on its own,
    where undecorated there is no warning (or one: the decorator's own coroutine, which carries
    the function's name, gives that one).
    """

    __slots__ = ("coro",)

    def __init__(self, coro: Any) -> None:
        self.coro = coro

    def __del__(self) -> None:
        self.coro.close()  # a no-op once the coroutine has finished


class CallHooks(Protocol):
    """What a decorator does around one call of a generator or async generator it wraps."""

    def begin(self) -> tuple[Any, Context | None]:
        """The call starts (its first resume): the state :meth:`end` gets back, and the context
        to make current while the wrapped generator runs (or None)."""

    def end(self, state: Any, exc: BaseException | None) -> None:
        """The call is over: exhausted or closed early by its consumer (``exc`` None), or
        ended by ``exc``. Must not raise."""


def generator(hooks: CallHooks, names: tuple[str, str]) -> Wrapper:
    """The ``wrapt`` wrapper, for one decoration, of a generator function: each call's
    generator runs between ``hooks.begin`` and ``hooks.end``, and every ``send``, ``throw`` and
    ``close`` reaches it (``yield from``). The generators it returns carry ``names``.

    The generator is made at the call, so that bad arguments raise where they do undecorated
    (and count as a failed call); it is timed from its first item."""
    run = _copy_named(_run_generator, names)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return run(hooks, _made(hooks, wrapped, args, kwargs))

    return wrapper


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


def async_generator(hooks: CallHooks, names: tuple[str, str]) -> Wrapper:
    """The ``wrapt`` wrapper, for one decoration, of an async generator function, as
    :func:`generator`. An async generator cannot ``yield from``: sends, throws and ``aclose``
    are forwarded by hand, with the context ``hooks.begin()`` returned current only while the
    wrapped one runs."""
    run = _copy_named(_run_async_generator, names)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return run(hooks, _made(hooks, wrapped, args, kwargs))

    return wrapper


def _unhooked_start(agen: Any) -> Any:
    """``agen.asend(None)``, the first step of the wrapped async generator, made while the
    thread's async generator hooks are unset.

    The event loop's ``firstiter`` hook registers every async generator started under it, and
    ``shutdown_asyncgens()`` closes all the registered ones at once: the wrapper *and* the one it
    wraps, concurrently, so the wrapper would forward its close into a generator that is running
    or already closed (``RuntimeError``, an error counted, a cleanup run twice). Unregistered, the
    wrapped generator is closed by its wrapper only, as ``yield from`` would do. The hooks are
    the thread's own, and nothing awaits between unsetting and restoring them: no other task
    sees them unset.
    """
    firstiter, finalizer = sys.get_asyncgen_hooks()
    if firstiter is None and finalizer is None:
        return agen.asend(None)
    sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
    try:
        return agen.asend(None)
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)


async def _run_async_generator(hooks: CallHooks, agen: Any) -> AsyncGenerator[Any, Any]:
    state, ctx = hooks.begin()
    try:
        step = _unhooked_start(agen)
        while True:
            token = None if ctx is None else otel_context.attach(ctx)
            try:
                item = await step
            except StopAsyncIteration:
                break
            finally:
                if token is not None:
                    otel_context.detach(token)
            try:
                value = yield item
            except BaseException as thrown:
                if agen.ag_frame is None:
                    # Already finished (closed behind the wrapper's back): forwarding would get
                    # None back from athrow() on 3.11 and yield it after a close.
                    raise
                # GeneratorExit too (aclose(), or athrow(GeneratorExit)): forwarded as it came,
                # so a generator that handles it behaves as it does undecorated.
                step = agen.athrow(thrown)
            else:
                step = agen.asend(value)
    except GeneratorExit:
        hooks.end(state, None)
        raise
    except BaseException as exc:
        hooks.end(state, exc)
        raise
    hooks.end(state, None)
