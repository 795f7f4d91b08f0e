"""The keyword options of :func:`obskit.configure` and the adapters, typed for checkers.

:class:`Options` names every option :func:`obskit.config.load_config` takes, each with the
argument forms it accepts (a test holds the keys to ``config.OPTION_NAMES``; ``config.SAMPLERS``
is made from :data:`Sampler`), so that ``configure(service_nme=...)`` or ``sampler="ratio"`` is an
error before the program runs, not only at ``configure()``. ``None`` is accepted everywhere, as
at run time: an option given as None is not given (its variable or default applies). The
values are checked at run time as before; this module adds no behaviour
(and imports nothing of obskit's: ``config`` imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

__all__ = [
    "LogLevel",
    "Names",
    "Options",
    "Sampler",
]

#: The samplers (``config.SAMPLERS`` is made from this list): the spec's names plus obskit's
#: rate-limited and adaptive ones.
Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "ratelimited",
    "parentbased_ratelimited",
    "adaptive",
    "parentbased_adaptive",
]
#: A level name as ``log_level``/``log_levels`` take it (in either case).
LogLevel = Literal[
    "CRITICAL",
    "ERROR",
    "WARNING",
    "INFO",
    "DEBUG",
    "NOTSET",
    "critical",
    "error",
    "warning",
    "info",
    "debug",
    "notset",
]
#: What a list option takes: a list, tuple or set of strings, or one comma-separated string.
Names = list[str] | tuple[str, ...] | set[str] | frozenset[str] | str


class Options(TypedDict, total=False):
    """The options of :func:`obskit.configure` (``docs/configuration.md``), all optional."""

    service_name: str | None
    service_version: str | None
    environment: str | None
    resource_attributes: Mapping[str, object] | str | None
    disabled: bool | None
    traces_exporter: Literal["otlp", "jsonl", "none"] | None
    otlp_endpoint: str | None
    otlp_traces_endpoint: str | None
    otlp_protocol: Literal["grpc", "http/protobuf"] | None
    otlp_headers: Mapping[str, str] | str | None
    otlp_timeout: float | None
    otlp_compression: Literal["gzip", "none"] | None
    otlp_certificate: str | None
    otlp_client_key: str | None
    otlp_client_certificate: str | None
    traces_file: str | None
    traces_file_max_bytes: int | None
    sampler: Sampler | None
    sampler_arg: float | None
    adaptive_max_ratio: float | None
    adaptive_error_threshold: float | None
    adaptive_interval: float | None
    keep_errors: bool | None
    keep_whole_trace: bool | None
    slow_threshold: float | None
    bsp_schedule_delay: float | None
    bsp_max_queue_size: int | None
    bsp_max_queue_bytes: int | None
    bsp_max_export_batch_size: int | None
    bsp_export_timeout: float | None
    metrics_exporter: Literal["prometheus", "otlp", "prometheus+otlp", "none"] | None
    metrics_path: str | None
    metrics_port: int | None
    metric_export_interval: float | None
    excluded_paths: Names | None
    http_buckets: list[float] | tuple[float, ...] | str | None
    http_known_methods: Names | None
    trusted_proxy_hops: int | None
    trust_forwarded_host: bool | None
    multiproc_dir: str | None
    include_default_registry: bool | None
    cardinality_limit: int | None
    runtime_metrics: bool | None
    logging: bool | None
    log_level: LogLevel | None
    log_levels: Mapping[str, LogLevel] | str | None
    log_format: Literal["otel", "ecs"] | None
    log_sample_rate: float | None
    log_sample_rates: Mapping[str, float] | str | None
    log_follow_trace: bool | None
    log_redact_keys: Names | None
    log_redact_emails: bool | None
    log_max_message_bytes: int | None
    log_flush_interval: float | None
    log_direct: bool | None
    logs_exporter: Literal["otlp", "none"] | None
    shutdown_timeout: float | None
