"""Flask extension: ``Obskit(app)`` or ``Obskit().init_app(app)``.

::

    from flask import Flask
    from obskit.flask import Obskit

    app = Flask(__name__)
    Obskit(app, service_name="checkout")

It wraps ``app.wsgi_app`` with :class:`obskit.wsgi.ObskitMiddleware` (spans, propagation, RED
metrics, ``/metrics``), reads the route template from ``request.url_rule`` before the view runs,
and records unhandled exceptions on the span through Flask's ``got_request_exception`` signal.
Options come from the keyword arguments, then ``app.config["OBSKIT"]``, then the environment.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

try:
    import flask
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("obskit.flask needs Flask: pip install 'obskit[flask]'") from exc

from obskit.http._pipeline import (
    HttpTelemetry,
    NestedRequest,
    Request,
    ensure_configured,
    nested_request,
    untag,
)
from obskit.wsgi import ENVIRON_KEY, ObskitMiddleware

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

    from obskit._options import Options

__all__ = ["Obskit"]


def _current() -> Request | NestedRequest | None:
    request: Request | None = flask.request.environ.get(ENVIRON_KEY)
    # None: an excluded path, or an app nested in another instrumented app's request.
    return request if request is not None else nested_request()


def _set_route() -> None:
    # One pass through the request proxy (each attribute read through it costs a lookup of the
    # request context), then plain attribute reads.
    current = flask.request._get_current_object()  # type: ignore[attr-defined]
    rule = current.url_rule
    if rule is None and current.routing_exception is not None:
        rule = _rule_of_wrong_method(current.routing_exception)
    if rule is not None:
        request: Request | NestedRequest | None = current.environ.get(ENVIRON_KEY)
        if request is None:
            request = nested_request()
        if request is not None:
            request.set_route(rule.rule)


def _rule_of_wrong_method(exc: Exception) -> Any:
    """The rule whose path a request matched with a method it does not allow (Flask answers
    405), or None. Werkzeug's matching raises before it sets any rule on the request; Django
    and FastAPI count such a request under its route, and so does this: the path is matched
    again for a method the rule allows (only for a 405)."""
    valid = getattr(exc, "valid_methods", None)
    if not valid:
        return None  # a 404, or a redirect: no rule of this path
    try:
        adapter = flask.globals.request_ctx.url_adapter
        if adapter is None:
            return None
        rule, _ = adapter.match(method=sorted(valid)[0], return_rule=True)
        return rule
    except Exception:  # matching differs after all: the request stays unmatched
        return None


def _route_known(endpoint: str | None, values: Any) -> None:
    # A URL value preprocessor: the first thing Flask runs once it has matched the URL.
    _set_route()


def _record_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    # Flask then answers 500 (or re-raises it, PROPAGATE_EXCEPTIONS): the middleware records the
    # exception once when the request finishes, so error.type stays the exception's type.
    request = _current()
    if request is not None:
        request.handled = exception
    else:  # an excluded path: Flask's "Exception on ..." line names no request
        untag(exception)


class Obskit:
    """The Flask extension. State lives in ``app.extensions["obskit"]``."""

    def __init__(self, app: flask.Flask | None = None, **options: Unpack[Options]) -> None:
        self.options: dict[str, Any] = dict(options)
        self.telemetry: HttpTelemetry | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Instrument ``app``."""
        options = {**app.config.get("OBSKIT", {}), **self.options}
        ensure_configured(options, "flask")
        self.telemetry = HttpTelemetry()
        self.telemetry.methods_fold_case = True  # Werkzeug upper-cases the method it routes on
        app.wsgi_app = ObskitMiddleware(app.wsgi_app, telemetry=self.telemetry)  # type: ignore[method-assign]
        # First in line -- Flask runs URL value preprocessors before before_request hooks -- so
        # a preprocessor or hook that aborts or answers early still has its route.
        app.url_value_preprocessors.setdefault(None, []).insert(0, _route_known)
        flask.got_request_exception.connect(_record_exception, app, weak=False)
        app.extensions["obskit"] = self
