"""obskit: drop-in observability for Python services.

Two lines give a service OpenTelemetry traces (W3C Trace Context in and out), Prometheus RED/USE
metrics behind cardinality guards, and JSON logs that carry the trace id::

    import obskit
    obskit.configure(service_name="checkout")

Importing obskit imports no web framework; the adapters (``obskit.flask``, ``obskit.fastapi``,
``obskit.django``, ``obskit.asgi``, ``obskit.wsgi``) import theirs when used.
"""

from __future__ import annotations

from obskit._runtime import (
    configure,
    force_flush,
    get_config,
    meter_provider,
    shutdown,
    tracer_provider,
)
from obskit._version import __version__
from obskit.config import Config, ConfigError
from obskit.logger import get_logger
from obskit.logging import setup_logging
from obskit.metrics.cardinality import CardinalityError, LabelRule
from obskit.metrics.instruments import Instrument, counter, gauge, histogram
from obskit.metrics.pools import (
    instrument_asyncio_queue,
    instrument_asyncio_semaphore,
    instrument_executor,
    instrument_psycopg_pool,
    instrument_sqlalchemy_pool,
)
from obskit.metrics.red import red
from obskit.metrics.runtime import instrument_runtime, start_loop_lag_monitor
from obskit.metrics.use import UseTracker, use
from obskit.tracing.context import ContextExecutor, run_in_executor, wrap
from obskit.tracing.propagation import inject

__all__ = [
    "CardinalityError",
    "Config",
    "ConfigError",
    "ContextExecutor",
    "Instrument",
    "LabelRule",
    "UseTracker",
    "__version__",
    "configure",
    "counter",
    "force_flush",
    "gauge",
    "get_config",
    "get_logger",
    "histogram",
    "inject",
    "instrument_asyncio_queue",
    "instrument_asyncio_semaphore",
    "instrument_executor",
    "instrument_psycopg_pool",
    "instrument_runtime",
    "instrument_sqlalchemy_pool",
    "meter_provider",
    "red",
    "run_in_executor",
    "setup_logging",
    "shutdown",
    "start_loop_lag_monitor",
    "tracer_provider",
    "use",
    "wrap",
]

# Reprs and docs show the public path (obskit.configure, not obskit._runtime.configure).
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        try:
            _obj.__module__ = "obskit"
        except (AttributeError, TypeError):  # wrapt proxies and builtins may refuse
            pass
del _name, _obj
