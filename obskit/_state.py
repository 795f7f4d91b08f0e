"""obskit's process state (structlog's ``_CONFIG`` idea): the Prometheus registry obskit's
metrics live in, the self-metrics, the configured runtime and the set of warnings already given;
:func:`obskit.testing.reset` starts it afresh.

Other modules keep only what follows from it or from the code itself: caches (encoded span names
and attributes, route series, log formats), the installed OpenTelemetry provider and outbound
hooks (installed once per process), the registered trackers and collectors. Those are bounded,
and survive a reset on purpose.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry

from obskit.metrics._mmap import allocate_before_mapping

if TYPE_CHECKING:
    from obskit._runtime import Runtime
    from obskit._selfmetrics import SelfMetrics
    from obskit.metrics.instruments import Instrument

# Multi-process values made from here on survive a full disk (see obskit/metrics/_mmap.py);
# configure(multiproc_dir=...) does the same when it turns multi-process mode on.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    allocate_before_mapping()

lock = threading.RLock()
#: Guards only the lazy creation of self-metrics; separate from ``lock`` because the export
#: thread creates them while ``shutdown()`` holds ``lock`` and waits for that thread.
self_metrics_lock = threading.RLock()
registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
self_metrics: SelfMetrics | None = None
runtime: Runtime | None = None
#: Bumped by every reset: caches of metric children compare it to know they are stale.
generation = 0
#: Every metric declared through obskit, by name (re-bound to a fresh registry on reset).
instruments: dict[str, Instrument[Any]] = {}
warned: set[str] = set()
#: (global propagator, whether it is the default tracecontext+baggage) -- cached per propagator.
default_propagators: tuple[object, bool] | None = None
#: What the application itself passed to ``configure()`` (or ``testing.capture()``): the
#: adapters' options (``settings.OBSKIT``, ``instrument(app, ...)``) go over these
#: (:func:`obskit.http._pipeline.ensure_configured`).
app_options: dict[str, Any] = {}
#: What each kind of adapter asked (``"django"``: ``settings.OBSKIT``), over ``app_options``.
adapter_options: dict[str, dict[str, Any]] = {}
#: The span sink of an active ``obskit.testing.capture()``: every (re)configure uses it, so an
#: adapter configuring obskit with its own options still reports to the capture.
pinned_sink: object | None = None
#: Tests set this so internal errors surface instead of being swallowed (fail loud in tests).
raise_internal_errors = False


def _renew_locks_after_fork() -> None:
    """In a forked child, fresh locks: a child forked while another thread held one -- declaring
    a metric, making the self-metrics, a scrape copying the registry's collectors or reading a
    value, a request ending on a route (a preloaded gunicorn master serving the metrics port)
    -- would wait on it for ever, having only the forking thread. prometheus_client's
    registries, metrics and values take theirs the same way."""
    global lock, self_metrics_lock
    lock = threading.RLock()
    self_metrics_lock = threading.RLock()
    _renew_multiprocess_value_lock()
    for owner in (registry, REGISTRY):
        _renew(owner)
        for metric in list(getattr(owner, "_collector_to_names", None) or ()):
            _renew(metric)
            children = getattr(metric, "_metrics", None)
            for child in (metric, *(children.values() if isinstance(children, dict) else ())):
                for value in list(getattr(child, "__dict__", {}).values()):
                    for item in value if isinstance(value, list) else (value,):
                        _renew(item)
                        # obskit's Cell (metrics/_direct.py): the shared Cells and the replaced
                        # value it still reads.
                        _renew(getattr(item, "_cells", None), "lock")
                        _renew(getattr(item, "_base", None))


def _renew_multiprocess_value_lock() -> None:
    """prometheus_client's multi-process values share one lock, a variable of the closure that
    made their class (``values.MultiProcessValue``): renewed through that closure's cell, which
    every method of the class shares."""
    from prometheus_client import values

    for cell in getattr(getattr(values.ValueClass, "inc", None), "__closure__", None) or ():
        try:
            if isinstance(cell.cell_contents, _LOCK_TYPES):
                cell.cell_contents = threading.Lock()
        except ValueError:  # an empty cell
            pass


def _renew(holder: Any, name: str = "_lock") -> None:
    if isinstance(getattr(holder, name, None), _LOCK_TYPES):
        setattr(holder, name, threading.Lock())


_LOCK_TYPES = (type(threading.Lock()),)
os.register_at_fork(after_in_child=_renew_locks_after_fork)
