"""gunicorn integration: JSON access lines that carry the trace id of the request they log.

gunicorn writes its access line *after* the WSGI application returned, when obskit has already
ended the request's span and restored the context -- a plain JSON formatter would log it without
a trace id. This logger class re-enters the request's context for the access line and adds the
request's fields as structured ``extra``::

    gunicorn --logger-class obskit.gunicorn.Logger --access-logfile - app:app

(or ``logger_class = "obskit.gunicorn.Logger"`` in ``gunicorn.conf.py``). With
``obskit.configure(logging=True)`` in the app, gunicorn's error and access loggers go through
obskit's JSON handler.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from contextvars import Token
from typing import Any

try:
    from gunicorn import glogging
except ImportError as exc:  # pragma: no cover - exercised without gunicorn
    raise ImportError("obskit.gunicorn needs gunicorn: pip install gunicorn") from exc

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from obskit.http._pipeline import ended_request
from obskit.logging import take_back_framework_loggers
from obskit.tracing._fastctx import with_span
from obskit.wsgi import ENVIRON_KEY

__all__ = ["Logger", "child_exit"]

#: gunicorn's number of workers, as :class:`Logger` last saw its settings (None before that):
#: obskit warns when several workers keep metrics of their own.
workers: int | None = None


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` server hook: a dead worker's live gauges leave ``/metrics``.

    In multi-process mode (``multiproc_dir``) each worker writes its gauges to files that the
    scrape sums; without this, a worker that died (``max_requests``, a timeout, an OOM kill)
    keeps counting in ``livesum``/``livemax`` gauges (in-flight requests, pool usage) until its
    files are removed. In ``gunicorn.conf.py``::

        from obskit.gunicorn import child_exit

    When the directory is set by ``configure(multiproc_dir=...)`` in the workers only, the master
    does not know it; every scrape also drops the live gauges of workers no longer running
    (:func:`obskit.metrics.exposition.render`), so they leave ``/metrics`` either way.
    """
    try:
        from obskit.metrics.exposition import forget_process

        forget_process(worker.pid)
    except Exception:  # the directory is gone: nothing to do
        pass


def _request_ms(request_time: Any) -> float | None:
    """The request's duration in ms: a ``timedelta``, or what gunicorn's ASGI worker passes
    (``seconds`` and ``microseconds`` only, which is all gunicorn's own atoms read)."""
    try:
        seconds = getattr(request_time, "days", 0) * 86400 + request_time.seconds
        return round(float(seconds * 1000 + request_time.microseconds / 1000), 3)
    except (AttributeError, TypeError):
        return None


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, with access lines correlated to the request's trace."""

    def setup(self, cfg: Any) -> None:
        """gunicorn's setup, then, if obskit's JSON logging is on, its loggers handed back to
        it: a reload (SIGHUP) runs this again and gunicorn would add its own text handlers
        beside obskit's, writing every line twice."""
        super().setup(cfg)
        global workers
        workers = getattr(cfg, "workers", None)
        take_back_framework_loggers(("gunicorn", "gunicorn.error", "gunicorn.access"))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Write the access line inside the logged request's trace context."""
        token = None
        try:
            # A level that drops the line (OBSKIT_LOG_LEVELS=gunicorn.access=WARNING): nothing
            # to build the line's fields and context for.
            if not self._access_enabled() or not self.access_log.isEnabledFor(logging.INFO):
                return
            request = environ.get(ENVIRON_KEY)
            atoms = self.atoms(resp, req, environ, request_time)
            extra = {
                "http.response.status_code": _int(atoms.get("s")),
                "url.path": atoms.get("U"),
                "client.address": atoms.get("h"),
                "duration_ms": _request_ms(request_time),
            }
            if request is not None:
                token = otel_context.attach(with_span(request.span, None, request))
            else:
                token = _attach_failed_request()
            self.access_log.info(
                self.cfg.access_log_format, self.atoms_wrapper_class(atoms), extra=extra
            )
        except Exception:
            self.error(traceback.format_exc())
        finally:
            if token is not None:
                otel_context.detach(token)

    def _access_enabled(self) -> bool:
        """Whether gunicorn writes access lines: its own flag (gunicorn 24+), else the test
        gunicorn 22 and 23 make in their ``access()``."""
        enabled = getattr(self, "access_log_enabled", None)
        if enabled is not None:
            return bool(enabled)
        cfg = self.cfg
        return bool(
            cfg.accesslog
            or getattr(cfg, "logconfig", None)
            or getattr(cfg, "logconfig_dict", None)
            or getattr(cfg, "logconfig_json", None)
            or (
                getattr(cfg, "syslog", False)
                and not getattr(cfg, "disable_redirect_access_to_syslog", False)
            )
        )


def _attach_failed_request() -> Token[Context] | None:
    """The context of the request whose exception gunicorn answers with its own 500: its
    ``handle_error`` writes the access line with an environ of its own, from the ``except``
    block that caught the exception as it left obskit's middleware (tagged with its request)."""
    ended = ended_request(sys.exc_info()[1], time.time())
    if ended is None:
        return None
    trace_id, span_id, _, flags, _, valid = ended.context
    if not valid:
        return None
    span = NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(flags)))
    return otel_context.attach(with_span(span, None, ended))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
