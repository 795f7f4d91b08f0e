"""obskit's Prometheus metrics as OpenTelemetry metric data, for the OTLP metrics push.

Business metrics, ``@obskit.red``, the USE and runtime metrics and the ``obskit_*`` self-metrics
live in obskit's prometheus_client registry (the cardinality guard sits in front of it). With
``metrics_exporter`` ``otlp`` they go out with each push too, as one more instrumentation scope
(``obskit.prometheus``) beside what the OpenTelemetry SDK's own instruments recorded
(``http.server.request.duration``): counters as cumulative monotonic sums, gauges as gauges,
histograms as cumulative explicit-bucket histograms, each series' labels as its attributes,
under the family's Prometheus name (a counter without its ``_total``, which a Prometheus
exporter adds back). Under gunicorn's multi-process mode each worker sends its own values, under
its own ``process.pid``, for the backend to add up.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any

from obskit import _selfmetrics, _state
from obskit._version import __version__

__all__ = ["SCOPE", "prometheus_scope"]

#: The instrumentation scope the bridged metrics are exported under.
SCOPE = "obskit.prometheus"
#: When a counter without a ``_created`` sample started (prometheus_client writes none under
#: multi-process mode, or when told not to): this process's start, near enough -- a forked
#: worker's own, as its counts are.
_PROCESS_START_NS = time.time_ns()


def _restart_at_fork() -> None:
    global _PROCESS_START_NS
    _PROCESS_START_NS = time.time_ns()


os.register_at_fork(after_in_child=_restart_at_fork)


def prometheus_scope(families: Iterable[Any] | None = None) -> Any:
    """A ``ScopeMetrics`` of obskit's registry (or of ``families``, prometheus_client
    ``Metric`` objects) as it stands; None when it holds no series. Families of other types
    (info, stateset, summary) are left out."""
    from opentelemetry.sdk.metrics.export import ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    if families is None:
        from obskit.metrics.exposition import before_collection

        before_collection()  # as a scrape does
        families = _state.registry.collect()
    now = time.time_ns()
    metrics = []
    for family in families:
        try:
            converted = _convert(family, now)
        except Exception as exc:  # one odd family (an app's collector) costs only itself
            _selfmetrics.internal_error("otlp_metrics_bridge", exc)
            continue
        if converted is not None:
            metrics.append(converted)
    if not metrics:
        return None
    return ScopeMetrics(
        scope=InstrumentationScope(SCOPE, __version__), metrics=metrics, schema_url=""
    )


def _key(labels: dict[str, str], drop: str | None = None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _ns(seconds: float | None) -> int:
    return _PROCESS_START_NS if seconds is None else int(seconds * 1e9)


def _convert(family: Any, now: int) -> Any:
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        Metric,
        NumberDataPoint,
        Sum,
    )

    kind = family.type
    created = {
        _key(s.labels): s.value for s in family.samples if s.name == family.name + "_created"
    }
    data: Any
    if kind == "counter":
        points = [
            NumberDataPoint(
                attributes=dict(s.labels),
                start_time_unix_nano=_ns(created.get(_key(s.labels))),
                time_unix_nano=now,
                value=float(s.value),  # an int past 64 bits, which OTLP's int64 cannot carry
            )
            for s in family.samples
            if s.name == family.name + "_total"
        ]
        data = Sum(
            data_points=points,
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
            is_monotonic=True,
        )
    elif kind == "gauge":
        points = [
            NumberDataPoint(
                attributes=dict(s.labels),
                start_time_unix_nano=0,
                time_unix_nano=now,
                value=float(s.value),
            )
            for s in family.samples
            if s.name == family.name
        ]
        data = Gauge(data_points=points)
    elif kind == "histogram":
        data = Histogram(
            data_points=_histogram_points(family, created, now),
            aggregation_temporality=AggregationTemporality.CUMULATIVE,
        )
    else:
        return None
    if not data.data_points:
        return None
    return Metric(
        name=family.name, description=family.documentation, unit=family.unit or "", data=data
    )


def _histogram_points(family: Any, created: dict[Any, float], now: int) -> list[Any]:
    from opentelemetry.sdk.metrics.export import HistogramDataPoint

    buckets: dict[Any, list[tuple[float, float]]] = {}
    counts: dict[Any, float] = {}
    sums: dict[Any, float] = {}
    attributes: dict[Any, dict[str, str]] = {}
    for s in family.samples:
        if s.name == family.name + "_bucket":
            key = _key(s.labels, "le")
            attributes.setdefault(key, {k: v for k, v in s.labels.items() if k != "le"})
            buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
        elif s.name == family.name + "_count":
            counts[_key(s.labels)] = s.value
        elif s.name == family.name + "_sum":
            sums[_key(s.labels)] = s.value
    points = []
    for key, cumulative in buckets.items():
        cumulative.sort()
        # Prometheus buckets count everything up to their bound; OTLP's count each interval.
        bounds = [bound for bound, _ in cumulative if not math.isinf(bound)]
        per_bucket = []
        below = 0.0
        for _, total in cumulative:
            per_bucket.append(int(total - below))
            below = total
        if not cumulative or not math.isinf(cumulative[-1][0]):
            per_bucket.append(int(counts.get(key, below) - below))
        if min(per_bucket) < 0:
            # Not cumulative (an app's collector): OTLP's counts are unsigned, and one bad point
            # would fail the whole push. The family is left out (and counted) instead.
            raise ValueError(f"{family.name}: bucket counts that are not cumulative")
        points.append(
            HistogramDataPoint(
                attributes=attributes[key],
                start_time_unix_nano=_ns(created.get(key)),
                time_unix_nano=now,
                count=sum(per_bucket),  # OTLP: the buckets add up to the count
                sum=sums.get(key, 0.0),
                bucket_counts=per_bucket,
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type]  # not kept by prometheus_client: left unset
                max=None,  # type: ignore[arg-type]
            )
        )
    return points
