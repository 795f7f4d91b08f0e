"""Direct access to OpenTelemetry's current context, for obskit's per-request paths.

The API's ``get_current``/``attach``/``detach`` and ``get_current_span`` are two or three
Python-level calls deep over a single ``ContextVar``. With the default runtime context
(``ContextVarsRuntimeContext``) obskit uses that ``ContextVar`` itself -- the same object, so
what it attaches is what every other instrumentation sees. Any other runtime context
(``OTEL_PYTHON_CONTEXT``) goes through the API unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as _api
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import INVALID_SPAN, Span, set_span_in_context

__all__ = [
    "DIRECT",
    "REQUEST_KEY",
    "SPAN_KEY",
    "attach",
    "current_request",
    "current_span",
    "detach",
    "get_current",
    "with_span",
]

try:
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - an API without it: the slow path below
    _SPAN_KEY = None  # type: ignore[assignment]

#: The obskit request being handled, kept in the same context as its span: one ``ContextVar``
#: set per request, and what a log line reads in one lookup.
REQUEST_KEY = _api.create_key("obskit.request")

_runtime = getattr(_api, "_RUNTIME_CONTEXT", None)
_var: Any = (
    _runtime._current_context
    if type(_runtime) is ContextVarsRuntimeContext and _SPAN_KEY is not None
    else None
)

#: Whether the default runtime context is in use: then the current span is
#: ``get_current().get(SPAN_KEY)``, as :func:`current_span` reads it.
DIRECT = _var is not None
SPAN_KEY: str = _SPAN_KEY

get_current: Callable[[], Context]
attach: Callable[[Context], Any]
detach: Callable[[Any], None]
if _var is not None:
    get_current = _var.get
    attach = _var.set
    detach = _var.reset
else:  # pragma: no cover - another runtime context
    get_current = _api.get_current
    attach = _api.attach
    detach = _api.detach


def current_span(context: Context | None = None) -> Span:
    """The span in ``context`` (the current one by default), else ``INVALID_SPAN``."""
    if _var is None:  # pragma: no cover - another runtime context
        from opentelemetry.trace import get_current_span

        return get_current_span(context)
    span = (context if context is not None else _var.get()).get(_SPAN_KEY)
    return INVALID_SPAN if span is None else span  # type: ignore[return-value]


_set_item = dict.__setitem__


def with_span(span: Span, context: Context | None = None, request: Any = None) -> Context:
    """``trace.set_span_in_context(span, context)`` (the current context by default), and
    ``request`` under :data:`REQUEST_KEY` if given, in one copy of the context (the API's
    ``set_value`` makes two per key)."""
    if _var is None:  # pragma: no cover - another runtime context
        new = set_span_in_context(span, context)
        return new if request is None else _api.set_value(REQUEST_KEY, request, new)
    new = Context(context if context is not None else _var.get())
    # Context forbids item assignment; this is a fresh copy no one else holds yet.
    _set_item(new, _SPAN_KEY, span)
    if request is not None:
        _set_item(new, REQUEST_KEY, request)
    return new


def current_request(context: Context | None = None) -> Any:
    """The obskit request in ``context`` (the current one by default), or None."""
    return (context if context is not None else get_current()).get(REQUEST_KEY)
