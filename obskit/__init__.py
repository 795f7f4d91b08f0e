"""obskit: drop-in observability for Python services.

Two lines give a service OpenTelemetry traces (W3C Trace Context in and out), Prometheus RED/USE
metrics behind cardinality guards, and JSON logs that carry the trace id::

    import obskit
    obskit.configure(service_name="checkout")

Importing obskit imports no web framework; the adapters (``obskit.flask``, ``obskit.fastapi``,
``obskit.django``, ``obskit.asgi``, ``obskit.wsgi``) import theirs when used.
"""

from __future__ import annotations

from obskit._runtime import configure, force_flush, get_config, shutdown, tracer_provider
from obskit._version import __version__
from obskit.config import Config, ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "__version__",
    "configure",
    "force_flush",
    "get_config",
    "shutdown",
    "tracer_provider",
]

for _name in ("configure", "force_flush", "get_config", "shutdown", "tracer_provider"):
    globals()[_name].__module__ = "obskit"
Config.__module__ = ConfigError.__module__ = "obskit"
del _name
