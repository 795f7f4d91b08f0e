"""Render obskit's metrics in Prometheus text or OpenMetrics, negotiated from ``Accept``.

One framework-neutral function; every adapter's ``/metrics`` calls it. OpenMetrics is chosen when
the scraper asks for it (Prometheus does when exemplar storage is on) -- exemplars exist only there.
In gunicorn multi-worker mode (``PROMETHEUS_MULTIPROC_DIR``) the samples of every worker are read
from the shared directory, so one scrape counts all workers' requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from obskit import _state

__all__ = ["render"]


class _Union(Collector):
    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = tuple(registries)

    def collect(self) -> Iterable[Metric]:
        seen: set[str] = set()
        for registry in self.registries:
            for metric in registry.collect():
                if metric.name not in seen:
                    seen.add(metric.name)
                    yield metric


def _collector() -> CollectorRegistry | _Union:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return registry
    runtime = _state.runtime
    include_default = runtime is None or runtime.config.include_default_registry
    if include_default:
        return _Union((_state.registry, REGISTRY))
    return _state.registry


def render(accept: str | None) -> tuple[bytes, str]:
    """Return ``(body, content_type)`` for a scrape that sent ``Accept: accept``."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_collector()), content_type
