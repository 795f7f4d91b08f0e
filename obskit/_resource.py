"""The per-process part of obskit's resource: ``service.instance.id`` and ``process.pid``.

Every signal (spans, OTLP metrics and logs, the provider other instrumentation uses) goes out
under one resource per configuration; a forked worker (gunicorn, ``--preload``) is an instance
of its own, so these two attributes are renewed in the child wherever a resource was built
before the fork.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

SERVICE_INSTANCE_ID = "service.instance.id"
PROCESS_PID = "process.pid"

_current: tuple[int, str] = (-1, "")
#: The ids obskit made (in this process or a parent): a copy of the parent's resource in a
#: forked child holds one of them, to be replaced; an id the user set is theirs and stays.
_made: set[str] = set()


def instance_id() -> str:
    """This process's ``service.instance.id``: a random UUID (semantic conventions: v4), made
    on first use and again in a forked child."""
    global _current
    pid = os.getpid()
    if _current[0] != pid:
        _current = (pid, str(uuid.uuid4()))
        _made.add(_current[1])
    return _current[1]


def for_this_process(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The per-process attributes of ``attributes`` (the configured resource, built in this
    process or in a parent before a fork) as they are in this process: ``process.pid`` if it is
    there, and ``service.instance.id`` -- this process's if obskit made it, the configured one
    if the user set it. Only those keys are returned: merged over a provider's resource after a
    fork, they also undo the SDK's own fork hook, which gives each provider an id of its own."""
    fresh: dict[str, Any] = {}
    if PROCESS_PID in attributes:
        fresh[PROCESS_PID] = os.getpid()
    configured = attributes.get(SERVICE_INSTANCE_ID)
    if configured is not None:
        fresh[SERVICE_INSTANCE_ID] = instance_id() if configured in _made else configured
    return fresh


def set_provider_resource(provider: Any, attributes: Mapping[str, Any]) -> None:
    """Make ``attributes`` the resource of an OpenTelemetry SDK provider -- a TracerProvider,
    MeterProvider or LoggerProvider -- and of the tracers and loggers it made. The SDK has no
    public setter: its ``_update_resource`` merges, where a reconfiguration's service name must
    replace the earlier one and a forked child's must drop what the SDK's own fork hook merged
    in (another ``service.instance.id``; the detectors of
    ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``). Read from the SDK as it stands (1.4x); a provider
    laid out otherwise gets the attributes merged over its resource. May raise: the callers
    count a failure."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource({key: value for key, value in attributes.items() if value is not None})
    tracers = getattr(provider, "_tracers", None)
    sdk_config = getattr(provider, "_sdk_config", None)
    if tracers is not None:  # TracerProvider
        with provider._tracers_lock:
            provider._resource = resource
            for tracer in tracers.values():
                tracer._set_resource(resource)
    elif sdk_config is not None and hasattr(sdk_config, "resource"):  # MeterProvider
        sdk_config.resource = resource
    elif hasattr(provider, "_active_loggers"):  # LoggerProvider
        provider._resource = resource
        for logger in list(provider._active_loggers):
            logger._set_resource(resource)
    else:
        update = getattr(provider, "_update_resource", None)
        if callable(update):
            update(resource)
