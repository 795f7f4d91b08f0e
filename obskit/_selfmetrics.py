"""obskit's own metrics (``obskit_*``), one-time warnings and the fail-open guard.

Instrumentation must never break the host app: whatever goes wrong inside obskit is counted here,
warned about once, and swallowed -- unless a test asked for internal errors to be raised.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from obskit import _state

__all__ = [
    "SelfMetrics",
    "export_failed",
    "internal_error",
    "spans_dropped",
    "spans_exported",
    "warn_once",
]

logger = logging.getLogger("obskit")


class SelfMetrics:
    """The ``obskit_*`` instruments, registered in one registry -- all of them or none: made
    first, registered after, so that one that cannot be made (a label-less counter's file, in a
    multi-process directory removed under the app) leaves no half of them registered, whose
    names every later attempt would then find taken."""

    def __init__(self, registry: CollectorRegistry) -> None:
        made = self._make()
        done: list[Any] = []
        try:
            for metric in made:
                registry.register(metric)
                done.append(metric)
        except BaseException:
            for metric in done:
                try:
                    registry.unregister(metric)
                except Exception:
                    pass
            raise

    def _make(self) -> list[Any]:
        registry = None  # registered by __init__, all at once
        self.spans_exported = Counter(
            "obskit_spans_exported",
            "Spans successfully exported.",
            ["exporter"],
            registry=registry,
        )
        self.spans_dropped = Counter(
            "obskit_spans_dropped",
            "Spans dropped before export (queue full, keep-buffer bounds, export failure).",
            ["reason"],
            registry=registry,
        )
        self.export_failures = Counter(
            "obskit_export_failures",
            "Export requests that failed (timeout, refused, non-2xx).",
            ["signal", "exporter"],
            registry=registry,
        )
        self.traces_kept = Counter(
            "obskit_traces_kept",
            "Head-dropped traces exported anyway because they failed or were slow.",
            registry=registry,
        )
        self.internal_errors = Counter(
            "obskit_internal_errors",
            "Errors inside obskit that were swallowed to protect the application.",
            ["component"],
            registry=registry,
        )
        self.cardinality_overflow = Counter(
            "obskit_cardinality_overflow",
            "Observations folded into the overflow series because a metric hit its series limit.",
            ["metric"],
            registry=registry,
        )
        self.cardinality_series = Gauge(
            "obskit_cardinality_series",
            "Distinct label sets per obskit metric.",
            ["metric"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.cardinality_limit = Gauge(
            "obskit_cardinality_limit",
            "Series limit per obskit metric.",
            ["metric"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.propagation_invalid = Counter(
            "obskit_propagation_invalid",
            "Inbound trace-context headers that were invalid (a new trace was started).",
            ["header", "reason"],
            registry=registry,
        )
        self.dropped_logs = Counter(
            "obskit_log_records_dropped",
            "Log records obskit could not format or export.",
            ["reason"],
            registry=registry,
        )
        self.metrics_shadowed = Counter(
            "obskit_metrics_shadowed",
            "Metric families left out of an exposition: another of the same name came first.",
            ["metric"],
            registry=registry,
        )
        return [
            self.spans_exported,
            self.spans_dropped,
            self.export_failures,
            self.traces_kept,
            self.internal_errors,
            self.cardinality_overflow,
            self.cardinality_series,
            self.cardinality_limit,
            self.propagation_invalid,
            self.dropped_logs,
            self.metrics_shadowed,
        ]


class _Nothing:
    """A self-metric that records nothing: what :func:`current` hands out when obskit's own
    metrics cannot be made."""

    def labels(self, *args: Any, **kwargs: Any) -> _Nothing:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


class _NoSelfMetrics:
    """Every self-metric of :class:`SelfMetrics`, recording nothing."""

    def __getattr__(self, name: str) -> Any:
        return _NOTHING


_NOTHING = _Nothing()


def current() -> SelfMetrics:
    """The self-metrics of the current registry, created on first use. Where they cannot be
    made (a multi-process directory removed under the app), instruments that record nothing,
    with one warning: obskit's own bookkeeping must not fail the application's calls."""
    metrics = _state.self_metrics
    if metrics is not None:
        return metrics
    with _state.self_metrics_lock:
        found = _state.self_metrics
        if found is None:
            found = _state.self_metrics = _made()
        return found


def _made() -> SelfMetrics:
    try:
        return SelfMetrics(_state.registry)
    except Exception as exc:
        warn_once(
            "self_metrics",
            "obskit: its own obskit_* metrics could not be made (%s: %s); they are not recorded "
            "in this process",
            type(exc).__name__,
            exc,
        )
        return _NoSelfMetrics()  # type: ignore[return-value]


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process."""
    if key in _state.warned:
        return
    _state.warned.add(key)
    try:
        logger.warning(message, *args)
    except Exception:  # an application handler that raises: the warning is lost, not the caller
        pass


def internal_error(component: str, exc: BaseException) -> None:
    """Count and warn once about an error inside obskit; re-raise only when tests asked for it."""
    if _state.raise_internal_errors:
        raise exc
    try:
        current().internal_errors.labels(component).inc()
    except Exception:  # its child's file, in a multi-process directory removed: still warned
        pass
    warn_once(
        f"internal:{component}",
        "obskit: %s failed (%s: %s); the application is unaffected, further errors are "
        "counted in obskit_internal_errors_total",
        component,
        type(exc).__name__,
        exc,
    )


def spans_dropped(reason: str, count: int = 1) -> None:
    """Count dropped spans and warn once per reason."""
    current().spans_dropped.labels(reason).inc(count)
    warn_once(
        f"spans_dropped:{reason}",
        "obskit: dropping spans (%s); counted in obskit_spans_dropped_total",
        reason,
    )


def spans_exported(exporter: str, count: int) -> None:
    """Count spans an exporter accepted."""
    current().spans_exported.labels(exporter).inc(count)


def export_failed(signal: str, exporter: str, count: int = 0, why: str | None = None) -> None:
    """Count a failed export request of ``signal`` and what it lost: ``count`` spans (traces)
    or log records (logs); a metrics export loses one collection, counted as the request.
    ``why``, when the exporter knows, goes into the warning."""
    metrics = current()
    metrics.export_failures.labels(signal, exporter).inc()
    if count and signal == "traces":
        metrics.spans_dropped.labels("export_failed").inc(count)
    elif count and signal == "logs":
        metrics.dropped_logs.labels("export_failed").inc(count)
    warn_once(
        f"export_failed:{signal}:{exporter}",
        "obskit: exporting %s to %s failed%s; counted in obskit_export_failures_total (lost "
        "spans and log records in obskit_spans_dropped_total and "
        "obskit_log_records_dropped_total)",
        signal,
        exporter,
        f" ({why})" if why else "",
    )


def traces_kept() -> None:
    """Count a head-dropped trace exported by the keep-errors/slow policy."""
    current().traces_kept.inc()
