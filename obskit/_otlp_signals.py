"""Optional OTLP export of metrics and logs, through the OpenTelemetry SDK's own exporters.

Spans use obskit's byte pipeline (see :mod:`obskit.tracing.pipeline`); metrics and logs are
periodic or batched already and do not sit on the request path, so the SDK's components serve.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from obskit import _selfmetrics
from obskit.config import Config

__all__ = ["build_logs", "build_metrics"]


def _endpoint(config: Config, signal: str) -> str | None:
    # The per-signal variable (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, ..._LOGS_ENDPOINT) wins and is
    # used as it is: None lets the SDK's exporter read it, as the spec says.
    if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip():
        return None
    if not config.otlp_endpoint:
        return None
    if config.otlp_protocol == "grpc":
        return config.otlp_endpoint
    return config.otlp_endpoint.rstrip("/") + f"/v1/{signal}"


def _exporter(config: Config, signal: str) -> Any:
    """The SDK's OTLP exporter for ``signal`` ("metrics" or "logs") over the configured protocol,
    its failed requests counted in ``obskit_export_failures_total`` as the span pipeline's are."""
    exporter = _sdk_exporter(config, signal)
    name = "otlp_grpc" if config.otlp_protocol == "grpc" else "otlp_http"
    export = exporter.export

    def counted(batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = export(batch, *args, **kwargs)
        except Exception:
            _failed(signal, name, batch)
            raise
        if getattr(result, "name", None) == "FAILURE":  # Metric- and LogExportResult
            _failed(signal, name, batch)
        return result

    exporter.export = counted
    return exporter


def _failed(signal: str, exporter: str, batch: Any) -> None:
    try:
        records = len(batch) if signal == "logs" else 0
        _selfmetrics.export_failed(signal, exporter, records)
    except Exception:  # counting must not break the SDK's export thread
        pass


def _sdk_exporter(config: Config, signal: str) -> Any:
    kwargs: dict[str, Any] = {
        "endpoint": _endpoint(config, signal),
        "headers": dict(config.otlp_headers),
        "timeout": config.otlp_timeout,
    }
    grpc = config.otlp_protocol == "grpc"
    if signal == "metrics" and grpc:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(insecure=True, **kwargs)
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(**kwargs)
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(insecure=True, **kwargs)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter(**kwargs)


def build_metrics(config: Config, resource_attributes: dict[str, Any]) -> Any:
    """A MeterProvider pushing over OTLP every ``metric_export_interval`` seconds."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = PeriodicExportingMetricReader(
        _exporter(config, "metrics"), export_interval_millis=config.metric_export_interval * 1000
    )
    # Not installed as the global MeterProvider: OpenTelemetry lets that be set once per process,
    # and obskit must be able to reconfigure. obskit's instruments use this provider directly;
    # ``obskit.meter_provider()`` hands it to other libraries.
    return MeterProvider(
        metric_readers=[reader],
        resource=Resource.create(resource_attributes),
        shutdown_on_exit=False,
    )


def build_logs(config: Config, resource_attributes: dict[str, Any]) -> tuple[Any, logging.Handler]:
    """A LoggerProvider exporting stdlib log records over OTLP, and the handler feeding it."""
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create(resource_attributes), shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(_exporter(config, "logs")))
    handler = LoggingHandler(logger_provider=provider)
    logging.getLogger().addHandler(handler)
    return provider, handler
