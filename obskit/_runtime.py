"""configure() and shutdown(): build the providers from a :class:`~obskit.config.Config`.

OpenTelemetry's global TracerProvider can be set only once per process, so obskit sets one SDK
``TracerProvider`` the first time it is configured and, on every later ``configure()``, swaps the
sampler and the span pipeline behind it (both are obskit delegates). A second ``configure()`` with
other options therefore really reconfigures -- spans started afterwards use the new settings --
and ``obskit.testing.reset()`` can return the process to its unconfigured state.
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import queue
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import StatusCode

from obskit import _selfmetrics, _state
from obskit._resource import SERVICE_INSTANCE_ID, instance_id, set_provider_resource
from obskit._version import __version__
from obskit.config import Config, bounded_wait, load_config, masked_url, unknown_variables
from obskit.tracing.pipeline import CompactSpanProcessor, SpanSink
from obskit.tracing.sampling import TRACES_OFF, SwitchableSampler, build_sampler, find_adaptive

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

    from opentelemetry.sdk.metrics import MeterProvider

    from obskit._options import Options

__all__ = ["Runtime", "configure", "get_config", "shutdown"]

logger = logging.getLogger("obskit")


class _SwitchableProcessor(SpanProcessor):
    """Forwards to the current runtime's span pipeline (or nowhere)."""

    def __init__(self) -> None:
        self.delegate: CompactSpanProcessor | None = None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        delegate = self.delegate
        if delegate is not None:
            delegate.on_end(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        delegate = self.delegate
        return True if delegate is None else delegate.force_flush(timeout_millis)


class _Provider(TracerProvider):
    """obskit's TracerProvider.

    The request pipeline's SERVER spans, ``@obskit.red``'s and the outbound CLIENT spans skip the
    SDK's span objects and reach obskit's span pipeline directly
    (:mod:`obskit.tracing.server_span`). A span processor the application adds here must see
    every span, so adding one turns that shortcut off for the rest of the process.
    """

    lean = True

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if not isinstance(span_processor, _SwitchableProcessor):
            self.lean = False
            runtime = _state.runtime
            if runtime is not None:
                runtime.lean_spans = False


@dataclass
class _Global:
    """The process-wide SDK provider obskit installed, and its swappable parts."""

    provider: _Provider
    sampler: SwitchableSampler
    processor: _SwitchableProcessor
    #: The class name of a global TracerProvider set before obskit's, warned about once
    #: :func:`configure` has set up obskit's logging (so the warning is one of its JSON lines).
    foreign: str | None = None


_global: _Global | None = None
_atexit_registered = False


def resource_attributes(config: Config) -> dict[str, Any]:
    """The resource of every signal (spans, OTLP metrics and logs, the tracer provider):
    service, deployment, host, process, telemetry.sdk; ``resource_attributes`` over them."""
    attrs: dict[str, Any] = {
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": _otel_sdk_version(),
        "telemetry.distro.name": "obskit",
        "telemetry.distro.version": __version__,
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": sys.platform,
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.executable.path": sys.executable,
        # One per process, on every signal: backends join an instance's traces, metrics and
        # logs on it (a user's own, in resource_attributes, wins).
        SERVICE_INSTANCE_ID: instance_id(),
    }
    attrs.update(config.resource_attributes)
    attrs["service.name"] = config.service_name
    attrs["service.version"] = config.service_version
    # Both the deprecated and the current semantic-convention key, so old and new queries work.
    attrs["deployment.environment"] = config.environment
    attrs["deployment.environment.name"] = config.environment
    return attrs


def _set_provider_resource(provider: TracerProvider, attributes: dict[str, Any]) -> None:
    """Give ``provider`` (and the tracers it made) the configured resource. obskit's own span
    pipeline stamps its batches with it, but a span processor or exporter the application adds
    to ``obskit.tracer_provider()`` -- and the ``otelServiceName`` OpenTelemetry's logging
    instrumentation reads -- see the provider's, which was the SDK's default
    (``unknown_service:python``)."""
    try:
        set_provider_resource(provider, attributes)
    except Exception as exc:  # an SDK whose internals moved: the spans' own resource stays
        _selfmetrics.internal_error("provider_resource", exc)


def _otel_sdk_version() -> str:
    try:
        from importlib.metadata import version

        return version("opentelemetry-sdk")
    except Exception:  # pragma: no cover
        return "unknown"


def make_sink(config: Config) -> SpanSink | None:
    """The span destination the configuration names."""
    if config.traces_exporter == "none":
        return None
    if config.traces_exporter == "jsonl":
        from obskit.exporters.jsonl import JsonLinesSpanSink

        return JsonLinesSpanSink(config.traces_file, max_bytes=config.traces_file_max_bytes)
    url = config.traces_endpoint
    assert url is not None  # load_config fills the default endpoint
    from obskit.exporters.otlp import GrpcSpanSink, HttpSpanSink, Tls

    tls = Tls(config.otlp_certificate, config.otlp_client_key, config.otlp_client_certificate)
    if config.otlp_protocol == "grpc":
        return GrpcSpanSink(
            url, headers=config.otlp_headers, compression=config.otlp_compression, tls=tls
        )
    return HttpSpanSink(
        url, headers=config.otlp_headers, compression=config.otlp_compression, tls=tls
    )


def keep_policy(config: Config) -> Any:
    """The keep-errors/slow decision for head-dropped traces, or None when off."""
    if not config.keep_whole_trace or (not config.keep_errors and config.slow_threshold is None):
        return None
    keep_errors = config.keep_errors
    slow_ns = None if config.slow_threshold is None else int(config.slow_threshold * 1e9)

    def keep(span: ReadableSpan) -> bool:
        if keep_errors and span.status.status_code is StatusCode.ERROR:
            return True
        if slow_ns is not None and span.end_time and span.start_time:
            return span.end_time - span.start_time >= slow_ns
        return False

    return keep


@dataclass
class Runtime:
    """What one ``configure()`` built. Reach it through :func:`obskit.get_config` and friends."""

    config: Config
    processor: CompactSpanProcessor | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: Any = None
    log_handler: logging.Handler | None = None
    json_handler: logging.Handler | None = None
    metrics_server: Any = None
    #: The metrics port's retry while another process holds the port (see
    #: :class:`obskit.metrics.exposition.MetricsPortRetry`).
    metrics_retry: Any = None
    closed: bool = False
    #: Fed with every finished request's outcome (error or not) by the request pipeline; the
    #: adaptive sampler sets it.
    record_outcome: Any = None
    #: Whether SERVER, ``@obskit.red`` and CLIENT spans may be made as lean spans that go to
    #: ``processor``: there is one, ``keep_whole_trace`` is off (it needs the SDK's recorded but
    #: unsampled spans) and no other span processor is on obskit's provider.
    lean_spans: bool = False
    #: When (``time.monotonic()``) a flush of :func:`flush_at_shutdown` last ran out of time.
    exit_flush_failed: float | None = None

    def shutdown(self, timeout: float, *, keep_json_handler: bool = False) -> bool:
        """Flush and stop everything, within ``timeout`` seconds overall.

        ``keep_json_handler``: a new runtime follows and replaces the JSON handler when it
        installs its own, so lines logged meanwhile by other threads are still written.
        """
        if self.closed:
            return True
        self.closed = True
        deadline = time.monotonic() + max(timeout, 0.0)
        ok = True
        if self.processor is not None:
            ok = self.processor.close(timeout=max(deadline - time.monotonic(), 0.0)) and ok
        self.release_port()
        for handler in (self.log_handler, None if keep_json_handler else self.json_handler):
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                if handler is self.json_handler:
                    from obskit.logging import retire_handler  # imports this module

                    retire_handler(handler)
        for provider in (self.meter_provider, self.logger_provider):
            if provider is not None:
                ok = _bounded(provider.shutdown, deadline - time.monotonic()) and ok
        return ok

    def release_port(self) -> None:
        """Close the metrics port (or stop waiting for it), for a new runtime to open."""
        servers, self.metrics_server, self.metrics_retry = (
            (self.metrics_server, self.metrics_retry),
            None,
            None,
        )
        for server in servers:
            if server is not None:
                server.close()


def _bounded(fn: Any, timeout: float) -> bool:
    """Run a shutdown that may hang (an SDK exporter on a dead collector) within ``timeout``."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception as exc:
            _selfmetrics.internal_error("shutdown", exc)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name="obskit-shutdown", daemon=True).start()
    except RuntimeError:  # Python 3.12 at interpreter shutdown: the thread started beforehand
        if not _standby.alive():
            return False
        _standby.jobs.put(run)
    return done.wait(max(timeout, 0.0))


class _Standby:
    """A thread started ahead of exit for :func:`_bounded`: Python 3.12 starts no thread at
    interpreter shutdown, where the atexit flush shuts the OTLP providers down."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        if not self.alive():
            self.jobs = queue.SimpleQueue()
            self.thread = threading.Thread(
                target=self._run, args=(self.jobs,), name="obskit-standby", daemon=True
            )
            self.thread.start()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[Any]) -> None:
        while True:
            jobs.get()()

    def after_fork(self) -> None:  # a forked child has no thread but the forking one
        if self.thread is not None:
            self.thread = None
            self.start()


_standby = _Standby()
os.register_at_fork(after_in_child=_standby.after_fork)


def _install_global() -> _Global:
    global _global
    found = _global
    if found is not None:
        return found
    # Under the lock: two threads using obskit for the first time at once would otherwise build
    # two providers, OpenTelemetry's global keeping one while obskit configures the other.
    with _state.lock:
        return _install_global_locked()


def _install_global_locked() -> _Global:
    global _global
    if _global is None:
        sampler = SwitchableSampler(TRACES_OFF)
        provider = _Provider(sampler=sampler, shutdown_on_exit=False)
        # After the provider's own fork hook (hooks run in the order registered), which gives
        # the child's provider an id of the SDK's: obskit's resource is set back over it.
        os.register_at_fork(after_in_child=_provider_resource_after_fork)
        processor = _SwitchableProcessor()
        provider.add_span_processor(processor)
        _global = _Global(provider, sampler, processor)
        current = trace.get_tracer_provider()
        if type(current).__name__ != "ProxyTracerProvider":
            _global.foreign = type(current).__name__
        else:
            trace.set_tracer_provider(provider)
        # W3C Baggage as the Recommendation writes it, for every caller of propagate.inject
        # and extract (obskit's outbound hooks included): see obskit.tracing._baggage.
        from opentelemetry import propagate

        from obskit.tracing import _baggage

        textmap = propagate.get_global_textmap()
        replaced = _baggage.install(textmap)
        if replaced is not textmap:
            propagate.set_global_textmap(replaced)
    return _global


def tracer_provider() -> TracerProvider:
    """obskit's TracerProvider (installed as the global one unless another was set first)."""
    return _install_global().provider


def configure(**options: Unpack[Options]) -> Config:
    """Configure obskit from ``options``, then ``OTEL_*``/``OBSKIT_*`` variables, then defaults.

    The options are those of ``docs/configuration.md``, typed (:class:`obskit._options.Options`)
    so that a checker refuses a misspelt one or a value of the wrong type.

    Idempotent: calling again with the same options changes nothing; with other options, the
    previous pipeline is flushed and replaced.

    Raises:
        ConfigError: an option has an unusable value (named with what is allowed).
    """
    config = _configure(load_config(**options))
    # The configuration is the application's now: adapters' earlier options are forgotten (a
    # later adapter's go over these, as ever).
    _state.app_options = dict(options)
    _state.adapter_options = {}
    return config


#: Serialises configure() and shutdown(). Not ``_state.lock``: shutting the old runtime down
#: waits for its export (up to ``shutdown_timeout``), and request threads take ``_state.lock``
#: to declare a metric on first use -- they must not wait for a collector.
_lifecycle = threading.RLock()


def _configure(config: Config, sink: SpanSink | None = None) -> Config:
    with _lifecycle:
        with _state.lock:
            old = _state.runtime
            if old is not None and not old.closed and old.config == config and sink is None:
                return old.config
        # The new runtime is built and installed before the old one is shut down: that waits on
        # its collectors (up to shutdown_timeout), and spans and log lines that end meanwhile
        # go to the new pipeline instead of to a closed one. Only the metrics port cannot be
        # held by both.
        if old is not None:
            old.release_port()
        try:
            runtime = _build(config, sink, previous=old)
        except BaseException:
            if old is not None:
                old.shutdown(timeout=config.shutdown_timeout, keep_json_handler=True)
            raise
        with _state.lock:
            _state.runtime = runtime
        if old is not None:
            old.shutdown(timeout=config.shutdown_timeout, keep_json_handler=True)
        if old is not None and old.json_handler is not None and runtime.json_handler is None:
            logging.getLogger().removeHandler(old.json_handler)  # logging turned off
            from obskit.logging import retire_handler

            retire_handler(old.json_handler)
        _register_exit_hooks()
        if runtime.meter_provider is not None or runtime.logger_provider is not None:
            _standby.start()
    try:
        _summary(config)
    except Exception:  # an application handler that raises: the summary is lost, not configure()
        pass
    return config


def _build(
    config: Config, sink: SpanSink | None = None, previous: Runtime | None = None
) -> Runtime:
    runtime = Runtime(config)
    try:
        _build_into(runtime, config, sink, previous)
    except BaseException:
        # What started (the export thread, the metrics port, OTLP providers) stops with the
        # error; the JSON handler stays, so that the app's lines are still written.
        try:
            runtime.shutdown(timeout=0.0, keep_json_handler=True)
        except Exception:
            pass
        raise
    return runtime


def _build_into(
    runtime: Runtime, config: Config, sink: SpanSink | None, previous: Runtime | None
) -> None:
    glob = _install_global()
    resource = resource_attributes(config)
    _set_provider_resource(glob.provider, resource)
    if config.multiproc_dir:
        _enable_multiprocess(config.multiproc_dir)
    # Metrics stay when the SDK is disabled (OTEL_SDK_DISABLED turns the OpenTelemetry signals
    # off), so their scrape port and the runtime metrics do too.
    if config.metrics_port is not None and "prometheus" in config.metrics_exporter:
        from obskit.metrics.exposition import MetricsPortRetry, start_metrics_server

        server = start_metrics_server(config.metrics_port, config.metrics_path)
        if isinstance(server, MetricsPortRetry):
            # The app's path serves the metrics until (unless) the port is taken over.
            runtime.metrics_retry = server
        else:
            runtime.metrics_server = server
    from obskit.metrics.runtime import instrument_runtime, uninstrument_runtime

    if config.runtime_metrics:
        instrument_runtime()
    else:  # a reconfiguration that turns them off
        uninstrument_runtime()
    # JSON logs are not an OpenTelemetry signal: they stay when the SDK is disabled.
    if config.logging:
        from obskit.logging import setup_logging

        runtime.json_handler = setup_logging(
            level=config.log_level,
            levels=config.log_levels,
            field_style=config.log_format,
            static_fields={
                "service.name": config.service_name,
                "service.version": config.service_version,
                "deployment.environment": config.environment,
            },
            sample_rate=config.log_sample_rate,
            sample_rates=config.log_sample_rates,
            follow_trace=config.log_follow_trace,
            sensitive_keys=config.log_redact_keys,
            redact_emails=config.log_redact_emails,
            max_message_bytes=config.log_max_message_bytes,
            flush_interval=config.log_flush_interval,
            direct=config.log_direct,
        )
    if glob.foreign is not None:
        _selfmetrics.warn_once(
            "foreign_provider",
            "obskit: a global TracerProvider (%s) was already set; obskit's spans go through "
            "its own provider, pass obskit.tracer_provider() to other instrumentation",
            glob.foreign,
        )
    from obskit.tracing.outbound import install as install_outbound

    # With traces off as with them on: a service with the SDK disabled still forwards the
    # context it received (docs/tracing.md, "Traces off"), as OpenTelemetry's propagators do.
    install_outbound()
    if config.disabled:
        glob.sampler.delegate = TRACES_OFF
        glob.processor.delegate = None
        return
    if sink is None:
        sink = _state.pinned_sink or make_sink(config)  # type: ignore[assignment]
    if sink is not None:
        runtime.processor = CompactSpanProcessor(
            sink,
            resource_attributes=resource,
            max_queue_size=config.bsp_max_queue_size,
            max_queue_bytes=config.bsp_max_queue_bytes,
            max_export_batch_size=config.bsp_max_export_batch_size,
            schedule_delay=config.bsp_schedule_delay,
            export_timeout=min(config.otlp_timeout, config.bsp_export_timeout),
            keep=keep_policy(config),
        )
    sampler = build_sampler(config) if sink is not None else TRACES_OFF
    adaptive = find_adaptive(sampler)
    if adaptive is not None:
        runtime.record_outcome = adaptive.record
    glob.processor.delegate = runtime.processor
    glob.sampler.delegate = sampler
    runtime.lean_spans = (
        runtime.processor is not None and not config.keep_whole_trace and glob.provider.lean
    )
    if runtime.lean_spans:
        from opentelemetry.sdk.trace import SpanLimits

        from obskit.tracing.server_span import set_limits

        # The limits the SDK spans of this process get (OTEL_SPAN_*_LIMIT, read when the
        # provider was made), so a span's limits do not depend on which class recorded it.
        set_limits(getattr(glob.provider, "_span_limits", None) or SpanLimits())
    if "otlp" in config.metrics_exporter or config.logs_exporter == "otlp":
        from obskit._otlp_signals import build_logs, build_metrics

        if "otlp" in config.metrics_exporter:
            runtime.meter_provider = build_metrics(config, resource)
        if config.logs_exporter == "otlp":
            runtime.logger_provider, runtime.log_handler = build_logs(
                config,
                resource,
                replacing=None if previous is None else previous.log_handler,
            )
            root = logging.getLogger()
            if not config.logging and (
                config.source_of("log_level") != "default" or root.level == logging.WARNING
            ):
                # Records below the root level are never made: without logging=True (which
                # sets it), log_level still decides what is exported -- given, or over the
                # stdlib's untouched WARNING; a level the app set itself is left alone.
                root.setLevel(config.log_level)


def _enable_multiprocess(directory: str) -> None:
    # prometheus_client picks its value class from the environment at import time; metrics
    # created after this point write to the shared directory (gunicorn workers).
    from prometheus_client import values

    from obskit.metrics._mmap import allocate_before_mapping

    allocate_before_mapping()
    os.makedirs(directory, exist_ok=True)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        # Series made before this point (a module-level metric used at import) move to the
        # shared directory with what they counted; hot paths re-take their cached writers.
        from obskit.metrics._direct import renew_values

        collectors = getattr(_state.registry, "_collector_to_names", None)
        for collector in list(collectors or ()):
            try:
                renew_values(collector)
            except Exception as exc:  # prometheus_client internals not as expected
                _selfmetrics.internal_error("multiprocess_values", exc)
        _state.generation += 1


def several_workers() -> str | None:
    """The server this process is one of several workers of (``uvicorn --workers 3``), when it
    can tell; else None."""
    try:
        # uvicorn's supervisor spawns each worker with its Config among the target's arguments.
        import multiprocessing

        config = getattr(multiprocessing.current_process(), "_kwargs", {}).get("config")
        if type(config).__module__ == "uvicorn.config" and not getattr(config, "reload", True):
            workers = getattr(config, "workers", None)
            if isinstance(workers, int) and workers > 1:
                return f"uvicorn --workers {workers}"
        # gunicorn, when obskit's logger class has seen its settings (in the master, before
        # the fork).
        workers = getattr(sys.modules.get("obskit.gunicorn"), "workers", None)
        if isinstance(workers, int) and workers > 1:
            return f"gunicorn --workers {workers}"
    except Exception:  # a server unlike these: nothing to tell
        pass
    return None


def _warn_if_one_of_several_workers() -> None:
    # Each worker has its own registry: a scrape reaches one of them, and the totals it reads
    # jump between workers -- counter resets to Prometheus, which inflate rate() -- silently.
    server = several_workers()
    if server is not None:
        _selfmetrics.warn_once(
            "metrics_per_worker",
            "obskit: this process is one of several workers (%s) and the multiproc_dir option "
            "is not set: its /metrics shows this worker's counts only, and each scrape reaches "
            "whichever worker answers it; set PROMETHEUS_MULTIPROC_DIR to an empty directory "
            "before the server starts so that every scrape shows all of them",
            server,
        )


def _summary(config: Config) -> None:
    # Warnings about the set-up, given here -- once JSON logging is on -- rather than while it is
    # built: they are lines of the service's log like any other.
    for variable in unknown_variables():
        _selfmetrics.warn_once(
            f"unknown_variable:{variable}",
            "obskit: %s is set but is not a variable obskit reads; it is ignored",
            variable,
        )
    if not config.multiproc_dir and "prometheus" in config.metrics_exporter:
        _warn_if_one_of_several_workers()
    if config.traces_exporter == "jsonl" and not config.disabled:
        from obskit.exporters.jsonl import warn_if_unwritable

        warn_if_unwritable(config.traces_file)  # now, not at the first export
    if config.disabled:
        logger.info("obskit: disabled by OTEL_SDK_DISABLED; no spans are recorded")
        return
    where = {
        "jsonl": f"file {config.traces_file}",
        "otlp": f"OTLP {config.otlp_protocol} {masked_url(config.traces_endpoint or '')}",
        "none": "nowhere (traces off)",
    }[config.traces_exporter]
    logger.info(
        "obskit %s: service=%s traces -> %s, sampler=%s%s, metrics=%s at %s",
        __version__,
        config.service_name,
        where,
        config.sampler,
        "" if config.sampler_arg is None else f"({config.sampler_arg})",
        config.metrics_exporter,
        config.metrics_path,
    )


def _register_exit_hooks() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_at_exit)
        import wrapt

        wrapt.when_imported("uvicorn.server")(_flush_after_uvicorn_shutdown)
        _atexit_registered = True


def _flush_after_uvicorn_shutdown(module: Any) -> None:
    """Export what is queued when uvicorn's graceful shutdown is over.

    uvicorn re-raises SIGTERM once it has shut down (the exit status a supervisor expects), so
    the process ends by the signal and no ``atexit`` handler runs. obskit's ASGI middleware
    flushes when the app's lifespan shutdown completes, but an app without lifespan support
    -- Django's ``ASGIHandler`` -- never gets there: every rolling deploy would lose the last
    second of spans. ``Server.shutdown`` is where uvicorn (0.13 to today) ends the graceful
    part, whatever the app.
    """
    import wrapt

    async def shutdown(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        began = time.monotonic()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            # Bounded by the shutdown_timeout option, never raises; not run again when the
            # lifespan's flush, inside this shutdown, ran out of time.
            flush_at_shutdown(since=began)

    try:
        wrapt.wrap_function_wrapper(module, "Server.shutdown", shutdown)
    except Exception as exc:  # a uvicorn without it: atexit and the lifespan hook remain
        _selfmetrics.internal_error("uvicorn_shutdown_hook", exc)


def _at_exit() -> None:
    runtime = _state.runtime
    if runtime is not None:
        shutdown(timeout=runtime.config.shutdown_timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush every signal and stop obskit's threads; returns False if ``timeout`` ran out.

    Never blocks longer than ``timeout`` seconds (default: the ``shutdown_timeout`` option), even
    when the collector hangs.
    """
    with _lifecycle:
        with _state.lock:
            runtime = _state.runtime
            if runtime is None:
                return True
            if _global is not None:
                _global.processor.delegate = None
                _global.sampler.delegate = TRACES_OFF
            _state.app_options = {}  # an adapter configuring afresh starts from its own
            _state.adapter_options = {}
        limit = runtime.config.shutdown_timeout if timeout is None else timeout
        return runtime.shutdown(bounded_wait(limit))


def force_flush(timeout: float = 5.0) -> bool:
    """Export what is queued so far -- spans, and OTLP metrics and log records when those are
    exported; False if that did not finish within ``timeout`` seconds. Never blocks longer."""
    runtime = _state.runtime
    if runtime is None or runtime.closed:
        return True
    timeout = bounded_wait(timeout)  # inf, or past what a thread can wait: "until done"
    deadline = time.monotonic() + timeout
    ok = True
    if runtime.processor is not None:
        ok = runtime.processor.force_flush(int(timeout * 1000))
    for provider in (runtime.meter_provider, runtime.logger_provider):
        if provider is not None:
            ok = _flush_provider(provider, deadline - time.monotonic()) and ok
    return ok


#: Each provider's flush still running in its own thread (a collector that does not answer):
#: one at a time, so that a caller flushing after every job does not pile up threads behind it.
_flushing: weakref.WeakKeyDictionary[Any, threading.Event] = weakref.WeakKeyDictionary()


def _no_flush_running() -> None:
    # A forked child: a flush the parent had under way is not running here, and its unset
    # event would make every flush in the child return False at once.
    global _flushing
    _flushing = weakref.WeakKeyDictionary()


os.register_at_fork(after_in_child=_no_flush_running)


def _provider_resource_after_fork() -> None:
    # A forked worker is its own process: the provider's resource names its process.pid, as
    # obskit's span pipeline and the OTLP metrics and logs providers do.
    runtime, found = _state.runtime, _global
    if runtime is not None and found is not None and not runtime.closed:
        _set_provider_resource(found.provider, resource_attributes(runtime.config))


def _flush_provider(provider: Any, timeout: float) -> bool:
    """``provider.force_flush()`` within ``timeout``; False at once while an earlier one has
    not finished."""
    with _state.lock:
        running = _flushing.get(provider)
        if running is not None and not running.is_set():
            return False
        done = _flushing[provider] = threading.Event()

    def flush() -> None:
        try:
            provider.force_flush()
        finally:
            done.set()

    return _bounded(flush, timeout)


def flush_at_shutdown(since: float | None = None) -> None:
    """:func:`force_flush` within the ``shutdown_timeout`` option, for a server's shutdown
    hook (the ASGI lifespan's end, uvicorn's ``Server.shutdown``). Skipped when a flush of
    this kind has run out of time after ``since`` (``time.monotonic()``): under uvicorn both
    hooks run in one shutdown, and with the collector down each waited the whole timeout --
    twice what a pod's grace period was sized for. Never raises."""
    runtime = _state.runtime
    if runtime is None:
        return
    try:
        failed = runtime.exit_flush_failed
        if since is not None and failed is not None and failed >= since:
            return
        if not force_flush(runtime.config.shutdown_timeout):
            runtime.exit_flush_failed = time.monotonic()
    except Exception as exc:
        _selfmetrics.internal_error("flush_at_shutdown", exc)


def meter_provider() -> MeterProvider | None:
    """The OpenTelemetry SDK MeterProvider obskit pushes OTLP metrics with, or None when OTLP
    metrics are off (or before :func:`configure`)."""
    runtime = _state.runtime
    return None if runtime is None else runtime.meter_provider


def get_config() -> Config | None:
    """The configuration in effect, or None before :func:`configure`."""
    runtime = _state.runtime
    return None if runtime is None or runtime.closed else runtime.config
