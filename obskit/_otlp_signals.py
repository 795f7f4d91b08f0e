"""Optional OTLP export of metrics and logs, through the OpenTelemetry SDK's own exporters.

Spans use obskit's byte pipeline (see :mod:`obskit.tracing.pipeline`); metrics and logs are
periodic or batched already and do not sit on the request path, so the SDK's components serve.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

from obskit import _selfmetrics
from obskit._resource import for_this_process, set_provider_resource
from obskit.config import Config, log_batch_settings, signal_timeout, signal_url

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

__all__ = ["build_logs", "build_metrics", "destination"]


def _signal_variable(signal: str, setting: str) -> bool:
    """Whether ``OTEL_EXPORTER_OTLP_{SIGNAL}_{SETTING}`` is set (the SDK's exporter reads it)."""
    return bool(os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{setting}", "").strip())


def _shared(config: Config, option: str) -> bool:
    """Whether ``option`` applies to every signal: given as an argument or by the generic
    variable, not by the traces' own (``OTEL_EXPORTER_OTLP_TRACES_*`` is for spans only)."""
    return not config.source_of(option).startswith("env:OTEL_EXPORTER_OTLP_TRACES_")


def _protocol(config: Config, signal: str) -> str:
    """The signal's transport: its own variable, else the shared setting (the spec's order)."""
    own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "").strip().lower()
    if own in ("grpc", "http/protobuf"):
        return own
    if _shared(config, "otlp_protocol"):
        return config.otlp_protocol
    # The traces' own variable set the option; the generic one still applies to this signal.
    generic = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip().lower()
    return generic if generic in ("grpc", "http/protobuf") else "http/protobuf"


def _endpoint(config: Config, signal: str) -> str | None:
    # The per-signal variable (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, ..._LOGS_ENDPOINT) wins and is
    # used as it is: None lets the SDK's exporter read it, as the spec says. None too for the
    # default collector address obskit filled in for traces: its port is the traces' protocol's,
    # and the SDK's exporter knows the default of its own.
    if _signal_variable(signal, "ENDPOINT") or config.source_of("otlp_endpoint") == "default":
        return None
    if not config.otlp_endpoint:
        return None
    if _protocol(config, signal) == "grpc":
        return config.otlp_endpoint
    return signal_url(config.otlp_endpoint, signal)


def destination(config: Config, signal: str) -> tuple[str, str, dict[str, str]]:
    """Where ``signal`` ("metrics" or "logs") goes over OTLP, as the SDK's exporter will send
    it: ``(URL, protocol, headers)`` -- what ``obskit doctor`` shows and checks."""
    from obskit.config import _headers

    protocol = _protocol(config, signal)
    grpc = protocol == "grpc"
    own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    endpoint = _endpoint(config, signal)
    if own:
        url = own
    elif endpoint is not None:
        url = endpoint
    else:  # the SDK exporter's own default
        url = "http://localhost:4317" if grpc else f"http://localhost:4318/v1/{signal}"
    if grpc and "://" not in url:
        url = "http://" + url  # host:port: the SDK's gRPC exporter takes it as an insecure target
    own_headers = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS", "").strip()
    if own_headers:
        try:
            headers = _headers(own_headers)
        except Exception:  # the SDK's exporter reads it as it can
            headers = {}
    else:
        headers = dict(config.otlp_headers) if _shared(config, "otlp_headers") else {}
    return url, protocol, headers


class _NotDuringExport(logging.Filter):
    """Drops records logged while the SDK exports (it sets OpenTelemetry's suppress-
    instrumentation key around every export): on the OTLP log handler, the export's own lines
    (urllib3's at DEBUG, a failure's) would be queued for the next export, which logs again, for
    ever; on the SDK exporters' loggers, a failure logged per attempt would repeat what obskit
    counts (``obskit_export_failures_total``) and warns about once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not get_value(_SUPPRESS_INSTRUMENTATION_KEY)


_NOT_DURING_EXPORT = _NotDuringExport()
#: The SDK's loggers that report a failed metrics or logs export, each attempt.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk._logs._internal.export",
)


def _quiet_export_loggers() -> None:
    for name in _EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if _NOT_DURING_EXPORT not in logger.filters:
            logger.addFilter(_NOT_DURING_EXPORT)


def _exporter(config: Config, signal: str) -> Any:
    """The SDK's OTLP exporter for ``signal`` ("metrics" or "logs") over the configured protocol,
    its failed requests counted in ``obskit_export_failures_total`` as the span pipeline's are."""
    exporter = _sdk_exporter(config, signal)
    name = "otlp_grpc" if _protocol(config, signal) == "grpc" else "otlp_http"
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
    _quiet_export_loggers()
    # A setting the signal's own variable names is left to the SDK's exporter (it reads it);
    # one read from the traces' own variable is not the signal's.
    kwargs: dict[str, Any] = {"endpoint": _endpoint(config, signal)}
    if not _signal_variable(signal, "HEADERS") and _shared(config, "otlp_headers"):
        kwargs["headers"] = dict(config.otlp_headers)
    # The timeout is always passed, read here in milliseconds as the specification gives it
    # (the SDK's exporters read the variables as seconds), so that the SDK reads none itself:
    # the signal's own variable first, then the option (when the generic variable or an
    # argument set it), then the generic variable (when the traces' own set the option).
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
    own = os.environ.get(variable)
    seconds = signal_timeout(variable, own.strip()) if own and own.strip() else None
    if seconds is not None:
        kwargs["timeout"] = seconds
    elif _shared(config, "otlp_timeout"):
        kwargs["timeout"] = config.otlp_timeout
    else:
        generic = os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "").strip()
        found = signal_timeout("OTEL_EXPORTER_OTLP_TIMEOUT", generic) if generic else None
        kwargs["timeout"] = found or _DEFAULT_TIMEOUT
    # A value of the signal's own variable obskit does not use -- unreadable, or empty, which
    # the specification treats as unset -- is kept from the SDK's gRPC exporters, which read it
    # whatever they are given and fail with a bare ValueError.
    with _hidden_from_sdk(variable if own is not None and seconds is None else None):
        return _build_sdk_exporter(config, signal, kwargs)


#: The OTLP exporters' timeout when nothing sets one (the specification's 10 s).
_DEFAULT_TIMEOUT = 10.0
#: The SDK modules that read a signal's own timeout variable from ``environ`` whatever timeout
#: they are given (opentelemetry-exporter-otlp-proto-grpc 1.4x).
_TIMEOUT_READERS = (
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)


@contextlib.contextmanager
def _hidden_from_sdk(variable: str | None) -> Iterator[None]:
    """The SDK's exporter modules read ``environ`` without ``variable`` while one is built:
    their module-level ``environ`` is a copy without it for that while -- ``os.environ`` itself,
    which other threads and child processes read, is left alone."""
    if variable is None:
        yield
        return
    import importlib

    patched: list[tuple[Any, Any]] = []
    try:
        for name in _TIMEOUT_READERS:
            try:
                module = importlib.import_module(name)
            except ImportError:  # the gRPC exporters are not installed: nothing reads it
                continue
            if hasattr(module, "environ"):
                patched.append((module, module.environ))
                module.environ = {k: v for k, v in os.environ.items() if k != variable}  # type: ignore[attr-defined]
        yield
    finally:
        for module, environ in patched:
            module.environ = environ


def _build_sdk_exporter(config: Config, signal: str, kwargs: dict[str, Any]) -> Any:
    grpc = _protocol(config, signal) == "grpc"
    if (
        not _signal_variable(signal, "COMPRESSION")
        and _shared(config, "otlp_compression")
        and config.source_of("otlp_compression") != "default"
    ):
        kwargs["compression"] = _compression(config.otlp_compression, grpc)
    kwargs.update(_tls(config, signal, grpc))
    if signal == "metrics" and grpc:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(insecure=True, **kwargs)
    if not grpc and not any(os.environ.get(name) for name in _credential_providers(signal)):
        from obskit.exporters.otlp import deadline_session

        kwargs["session"] = deadline_session()
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


def _credential_providers(signal: str, transport: str = "HTTP") -> tuple[str, str]:
    """The variables naming a credential provider's entry point for the SDK's exporter (a
    ``requests`` Session for HTTP, channel credentials for gRPC): where one is set, what it
    gives is used rather than what obskit would pass."""
    return (
        f"OTEL_PYTHON_EXPORTER_OTLP_{transport}_CREDENTIAL_PROVIDER",
        f"OTEL_PYTHON_EXPORTER_OTLP_{transport}_{signal.upper()}_CREDENTIAL_PROVIDER",
    )


#: The TLS options and the part of their variables' names after the signal.
_TLS_OPTIONS = (
    ("otlp_certificate", "CERTIFICATE"),
    ("otlp_client_key", "CLIENT_KEY"),
    ("otlp_client_certificate", "CLIENT_CERTIFICATE"),
)


def tls_files(config: Config, signal: str) -> tuple[str | None, str | None, str | None]:
    """The CA, client key and client certificate files ``signal`` is sent with, as its
    exporter takes them: the signal's own variable, else obskit's option (unless only the
    traces' variable set it), else the generic variable -- what ``obskit doctor`` uses."""
    if signal == "traces":
        return config.otlp_certificate, config.otlp_client_key, config.otlp_client_certificate

    def pick(option: str, setting: str) -> str | None:
        own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{setting}", "").strip()
        if own:
            return own
        if _shared(config, option):
            value: str | None = getattr(config, option)
            return value
        return os.environ.get(f"OTEL_EXPORTER_OTLP_{setting}", "").strip() or None

    ca, key, chain = (pick(option, setting) for option, setting in _TLS_OPTIONS)
    return ca, key, chain


def _tls(config: Config, signal: str, grpc: bool) -> dict[str, Any]:
    """The SDK exporter's TLS arguments from ``otlp_certificate``, ``otlp_client_key`` and
    ``otlp_client_certificate`` given as arguments (the SDK's exporters read only the
    variables): ``certificate_file``... for HTTP, ``credentials`` for gRPC (used for an
    ``https`` endpoint only). Left to the SDK where the signal's own variables or a credential
    provider say otherwise."""
    files = {
        option: value
        for option, setting in _TLS_OPTIONS
        if (value := getattr(config, option))
        and not _signal_variable(signal, setting)
        and _shared(config, option)
    }
    if not files:
        return {}
    if not grpc:
        return {f"{option.removeprefix('otlp_')}_file": path for option, path in files.items()}
    if _signal_variable(signal, "CERTIFICATE") or any(
        os.environ.get(name) for name in _credential_providers(signal, "GRPC")
    ):
        return {}
    from obskit.exporters.otlp import Tls

    # Every file as the signal takes it: a key named by the signal's own variable goes with a
    # certificate given as an option (gRPC ignores the variables once credentials are given).
    return {"credentials": Tls(*tls_files(config, signal)).grpc_credentials()}


def _compression(name: str, grpc: bool) -> Any:
    """``otlp_compression`` as the SDK exporter of the transport takes it."""
    if grpc:
        import grpc as grpc_module

        return (
            grpc_module.Compression.Gzip
            if name == "gzip"
            else grpc_module.Compression.NoCompression
        )
    from opentelemetry.exporter.otlp.proto.http import Compression

    return Compression.Gzip if name == "gzip" else Compression.NoCompression


def _renew_at_fork(provider: Any, exporter: Any, resource_attributes: dict[str, Any]) -> None:
    """In a forked child (a gunicorn worker under ``--preload``), ``provider``'s resource names
    the child's ``process.pid`` and ``service.instance.id`` (those of obskit's other signals,
    :func:`obskit._resource.for_this_process` of the configured ``resource_attributes``), and
    ``exporter`` lets go of the parent's kept-alive connection:
    written to from two processes, it would mix their requests. Registered after the SDK's own
    fork hooks of ``provider`` (they renew its locks first). A MeterProvider's child starts its
    counts afresh (:func:`_start_afresh`)."""
    provider_ref = weakref.ref(provider)
    exporter_ref = weakref.ref(exporter)

    def renew() -> None:
        try:
            found = provider_ref()
            if found is not None:
                set_provider_resource(
                    found, {**resource_attributes, **for_this_process(resource_attributes)}
                )
            consumer = getattr(found, "_measurement_consumer", None)
            if consumer is not None:
                _start_afresh(consumer)
            for reader in getattr(found, "_metric_readers", ()):
                # Held by the parent's export (a whole exchange with the collector) at the
                # fork: the child's exports would wait for it for ever.
                if hasattr(reader, "_export_lock"):
                    reader._export_lock = threading.Lock()
            found = exporter_ref()
            # Where the SDK keeps its requests Session, by version: exporter._client._transport
            # (1.4x), exporter._transport, exporter itself.
            for holder in (
                getattr(getattr(found, "_client", None), "_transport", None),
                getattr(found, "_transport", None),
                found,
            ):
                session = getattr(holder, "_session", None)
                if session is not None:
                    renew_session = getattr(session, "obskit_after_fork", None)
                    if renew_session is not None:
                        renew_session()
                    else:
                        session.close()  # closes this process's copies of the sockets only
                    break
        except Exception:  # the SDK laid out otherwise: its pid and connection stay as they are
            pass

    os.register_at_fork(after_in_child=renew)


def _start_afresh(consumer: Any) -> None:
    """Drop a forked child's copy of its MeterProvider's aggregations (the SDK's measurement
    consumer), so that each gunicorn worker exports its own counts from its own start, as its
    Prometheus metrics do, rather than its master's pre-fork points again as if they were its
    own (the SDK keeps them: open-telemetry/opentelemetry-python#2767). The locks are made anew
    as well: one held by the parent's export thread at the fork would stay held in the child,
    and the SDK renews only its provider's. The dictionaries are replaced, not cleared, so that
    nothing iterating over the old ones can fail. On another layout of the SDK's internals
    nothing is changed."""
    storages = getattr(consumer, "_reader_storages", None)
    if not isinstance(storages, dict):
        return
    for storage in storages.values():
        matches = getattr(storage, "_instrument_view_instrument_matches", None)
        if not isinstance(matches, dict) or not hasattr(storage, "_lock"):
            return
        storage._lock = threading.RLock()
        for views in matches.values():
            for match in views:
                if hasattr(match, "_attributes_aggregation") and hasattr(match, "_lock"):
                    match._lock = threading.Lock()
                    match._attributes_aggregation = {}
    if hasattr(consumer, "_lock"):
        consumer._lock = threading.Lock()


def build_metrics(config: Config, resource_attributes: dict[str, Any]) -> MeterProvider:
    """A MeterProvider pushing over OTLP every ``metric_export_interval`` seconds."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    exporter = _exporter(config, "metrics")
    reader = _bridging_reader_class()(
        exporter,
        export_interval_millis=config.metric_export_interval * 1000,
        resource_attributes=resource_attributes,
    )
    # Not installed as the global MeterProvider: OpenTelemetry lets that be set once per process,
    # and obskit must be able to reconfigure. obskit's instruments use this provider directly;
    # ``obskit.meter_provider()`` hands it to other libraries.
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource(resource_attributes),
        shutdown_on_exit=False,
    )
    _renew_at_fork(provider, exporter, resource_attributes)
    return provider


_reader_class: Any = None


def _bridging_reader_class() -> Any:
    """The SDK's periodic reader, adding obskit's Prometheus metrics to each export
    (:mod:`obskit.metrics.otlp_bridge`), whether or not the SDK's own instruments recorded
    anything. A failure to convert them is counted and leaves the SDK's export as it was."""
    global _reader_class
    if _reader_class is not None:
        return _reader_class

    from opentelemetry.sdk.metrics.export import (
        MetricsData,
        PeriodicExportingMetricReader,
        ResourceMetrics,
    )
    from opentelemetry.sdk.resources import Resource

    from obskit.metrics.otlp_bridge import prometheus_scope

    class _BridgingReader(PeriodicExportingMetricReader):
        def __init__(self, *args: Any, resource_attributes: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The resource of every signal, as given: Resource.create would run the SDK's
            # detectors again (another service.instance.id, OTEL_RESOURCE_ATTRIBUTES over the
            # argument), on a thread pool that an interpreter at exit refuses.
            self._obskit_resource = Resource(resource_attributes)
            # Per thread, not under a lock: collections run on the SDK's ticker thread, in
            # force_flush and at shutdown, and a lock held at a fork would stay held in the
            # forked worker.
            self._obskit_calls = threading.local()

        # Final in the SDK's typing, overridden all the same: it calls _receive_metrics only
        # when its own instruments have data, and obskit's metrics must go out regardless.
        # This override still runs the SDK's collect() first, unchanged.
        def collect(self, timeout_millis: float = 10_000) -> None:  # type: ignore[misc]
            calls = self._obskit_calls
            calls.received = False
            super().collect(timeout_millis=timeout_millis)
            if calls.received or getattr(self, "_collect", None) is None:
                return
            # The SDK's instruments had nothing: obskit's metrics go out on their own.
            added = self._with_obskit(None)
            if added is not None:
                super()._receive_metrics(added, timeout_millis=timeout_millis)

        def _receive_metrics(
            self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            self._obskit_calls.received = True
            metrics_data = self._with_obskit(metrics_data) or metrics_data
            super()._receive_metrics(metrics_data, timeout_millis=timeout_millis, **kwargs)

        def _with_obskit(self, metrics_data: Any) -> Any:
            try:
                scope = prometheus_scope()
                if scope is None:
                    return metrics_data
                if metrics_data is not None and metrics_data.resource_metrics:
                    first, *rest = metrics_data.resource_metrics
                    first = ResourceMetrics(
                        resource=first.resource,
                        scope_metrics=[*first.scope_metrics, scope],
                        schema_url=first.schema_url,
                    )
                    return MetricsData(resource_metrics=[first, *rest])
                # The provider's resource, as a forked child's is: with its own process.pid
                # and service.instance.id.
                resource = self._obskit_resource.merge(
                    Resource(for_this_process(self._obskit_resource.attributes))
                )
                return MetricsData(
                    resource_metrics=[
                        ResourceMetrics(resource=resource, scope_metrics=[scope], schema_url="")
                    ]
                )
            except Exception as exc:  # the SDK's own metrics still go out
                _selfmetrics.internal_error("otlp_metrics_bridge", exc)
                return metrics_data

    _reader_class = _BridgingReader
    return _reader_class


def build_logs(
    config: Config,
    resource_attributes: dict[str, Any],
    *,
    replacing: logging.Handler | None = None,
) -> tuple[Any, logging.Handler]:
    """A LoggerProvider exporting stdlib log records over OTLP, and the handler feeding it, put
    on the root logger in the place of ``replacing`` (a previous configuration's handler)."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    class _CountingProcessor(BatchLogRecordProcessor):
        """Counts the records the SDK drops from its full queue (it only logs a warning, which
        its DuplicateFilter then silences): ``obskit_log_records_dropped_total{reason=
        "queue_full"}``, warned about once. Read from the SDK's batch processor as it stands;
        a later SDK laid out otherwise goes uncounted, not broken."""

        def on_emit(self, log_record: Any) -> None:
            batch = getattr(self, "_batch_processor", None)
            queue = getattr(batch, "_queue", None)
            full = queue is not None and len(queue) >= getattr(batch, "_max_queue_size", 1 << 62)
            if full and not getattr(batch, "_shutdown", False):
                _queue_full()
            super().on_emit(log_record)

    provider = LoggerProvider(resource=Resource(resource_attributes), shutdown_on_exit=False)
    exporter = _exporter(config, "logs")
    batches = log_batch_settings(os.environ)  # checked by configure() already
    provider.add_log_record_processor(
        _CountingProcessor(
            exporter,
            schedule_delay_millis=batches["OTEL_BLRP_SCHEDULE_DELAY"],
            max_export_batch_size=batches["OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"],
            export_timeout_millis=batches["OTEL_BLRP_EXPORT_TIMEOUT"],
            max_queue_size=batches["OTEL_BLRP_MAX_QUEUE_SIZE"],
        )
    )
    _renew_at_fork(provider, exporter, resource_attributes)
    with warnings.catch_warnings():
        # The SDK deprecates its LoggingHandler (it moves to a contrib package); the warning is
        # for obskit, and an app run with -W error must not fail in configure() over it.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = _log_handler_class()(logger_provider=provider)
    from obskit.logging import DEFAULT_SENSITIVE_KEYS, JsonFormatter

    # The JSON lines' redaction rules, applied to what goes to the collector too.
    handler.redactor = JsonFormatter(
        sensitive_keys=(*DEFAULT_SENSITIVE_KEYS, *config.log_redact_keys),
        redact_emails=config.log_redact_emails,
    )
    handler.addFilter(_NOT_DURING_EXPORT)
    root = logging.getLogger()
    # In one assignment, under addHandler's lock: a line another thread logs meanwhile is
    # exported through one of the two handlers, never through neither or both.
    with getattr(logging, "_lock", None) or contextlib.nullcontext():
        handlers = list(root.handlers)
        if replacing is not None and replacing in handlers:
            handlers[handlers.index(replacing)] = handler
        elif handler not in handlers:
            handlers.append(handler)
        root.handlers = handlers
    return provider, handler


def _queue_full() -> None:
    try:
        _selfmetrics.current().dropped_logs.labels("queue_full").inc()
        _selfmetrics.warn_once(
            "otlp_logs_queue_full",
            "obskit: the OTLP log queue is full (the collector is slow or down); records are "
            'dropped and counted in obskit_log_records_dropped_total{reason="queue_full"}',
        )
    except Exception:  # counting must not break the app's log call
        pass


#: What an OTLP attribute value can be (besides sequences of one of them).
_SCALARS = (str, bool, int, float)
_INT64 = range(-(2**63), 2**63)


def _carried(value: Any) -> bool:
    """Whether OTLP carries ``value`` as it is (the SDK would warn about it and drop it)."""
    if isinstance(value, _SCALARS):
        return not isinstance(value, int) or isinstance(value, bool) or value in _INT64
    if isinstance(value, (list, tuple)):
        kinds = {type(item) for item in value}
        return len(kinds) <= 1 and all(
            isinstance(item, _SCALARS) and _carried(item) for item in value
        )
    return False


def _redacted_value(redactor: Any, value: Any) -> Any:
    """An attribute value as OTLP carries it, redacted as the JSON line's: text, and text inside
    a list or mapping, scanned; an object OTLP cannot carry written as its ``str()`` and that
    scanned; a number past 64 bits written as its digits (no text to scan)."""
    if _carried(value):
        return redactor._redact(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return _as_text(redactor._redact(value))
    return redactor._redact(_as_text(value))


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


_handler_class: Any = None
#: The attributes of the exception's text the SDK's LoggingHandler adds to a record.
_EXCEPTION_TEXT = ("exception.message", "exception.stacktrace")


def _log_handler_class() -> Any:
    """The SDK's LoggingHandler, writing an ``extra=`` field OTLP cannot carry (an object, an
    int past 64 bits) as its ``str()`` -- a non-text key as the JSON line spells it -- instead
    of the SDK warning about it (one more WARNING line per app line) and dropping it; obskit's
    own correlation fields stay out (the record's trace context is the log record's own)."""
    global _handler_class
    if _handler_class is None:
        from opentelemetry.sdk._logs import LoggingHandler

        # _BASE_ATTRIBUTES: attributes every LogRecord has come first; the rest came from
        # extra= (or a filter).
        from obskit.logging import _BASE_ATTRIBUTES, MASK, JsonFormatter, _mappings, _safe_key

        base = LoggingHandler._get_attributes

        class _LoggingHandler(LoggingHandler):
            #: Masks sensitive keys and values as the JSON lines do (set by build_logs).
            redactor = JsonFormatter()

            def flush(self) -> None:
                # The SDK flushes on a new thread, which Python 3.12 refuses at interpreter
                # shutdown (logging.shutdown at exit, after obskit's own exit flush).
                try:
                    super().flush()
                except RuntimeError:
                    pass

            def _get_attributes(self, record: logging.LogRecord) -> Any:  # type: ignore[override]
                attributes = dict(base(record) or {})
                redactor = self.redactor
                # The exception's text (message, stack trace): the SDK adds it; the JSON line
                # redacts the same text.
                for key in _EXCEPTION_TEXT:
                    value = attributes.get(key)
                    if value.__class__ is str:
                        attributes[key] = redactor._redact(value)
                for key in islice(vars(record), _BASE_ATTRIBUTES, None):
                    if key not in attributes:
                        continue
                    value = attributes[key]
                    if key.__class__ is not str:  # extra={1: ...}, which the stdlib takes
                        del attributes[key]
                        key = _safe_key(key)
                    if key.startswith("obskit_"):
                        attributes.pop(key, None)
                    elif redactor._is_sensitive(key):
                        attributes[key] = MASK
                    else:
                        attributes[key] = _redacted_value(redactor, value)
                return attributes

            def _translate(self, record: logging.LogRecord) -> Any:
                translated = super()._translate(record)
                body, redactor = translated.body, self.redactor
                if isinstance(record.msg, str) and record.args and _mappings(record.args):
                    # log.info("payload %s", {...}): the mapping's sensitive keys masked before
                    # it becomes text, as in the JSON line.
                    translated.body = redactor._redact(
                        redactor._structured_message(record.msg, record.args)
                    )
                elif isinstance(body, (str, Mapping, list, tuple)):
                    # A mapping or list message (log.info({...})) keeps its structure, its
                    # sensitive keys masked and its text scanned.
                    translated.body = redactor._redact(body)
                elif body is not None:
                    translated.body = _redacted_value(redactor, body)
                return translated

        _handler_class = _LoggingHandler
    return _handler_class
