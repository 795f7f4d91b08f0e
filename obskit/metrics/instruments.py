"""Declaring metrics: every obskit metric -- HTTP, decorators, USE, business -- is made here.

Each instrument wraps a prometheus_client metric in obskit's registry behind a
:class:`~obskit.metrics.cardinality.Guard`, so no label can explode the metrics store::

    orders = obskit.counter("orders_completed", "Orders completed.", ["payment_method"])
    orders.labels("card").inc()

Declaring the same name again with the same definition (kind, labels, buckets, rules, limit,
gauge mode) returns the same instrument, so decorators and modules can declare what they use
without coordinating; another definition under that name is refused. Names are Prometheus'
classic ones (``[a-zA-Z_][a-zA-Z0-9_]*``, colons left to recording rules; labels the same).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, overload

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from obskit import _selfmetrics, _state
from obskit.metrics.cardinality import Guard, LabelRule, check_label_names, check_metric_name

__all__ = ["Instrument", "counter", "counting", "gauge", "histogram", "instruments"]

M = TypeVar("M", bound=MetricWrapperBase)

RuleSpec = LabelRule | Iterable[str] | str | re.Pattern[str] | None


class Instrument(Generic[M]):
    """A guarded metric of the prometheus_client class ``M`` (``Counter``, ``Gauge`` or
    ``Histogram``). ``labels(*values)`` gives the child, an ``M`` too, to
    ``inc``/``set``/``observe``; a label-less instrument has those of its kind itself."""

    __slots__ = (
        "_cache",
        "_guard",
        "_kwargs",
        "_metric",
        "kind",
        "label_names",
        "limit",
        "name",
        "rules",
    )

    def __init__(
        self,
        kind: type[M],
        name: str,
        documentation: str,
        label_names: Sequence[str],
        limit: int,
        rules: Mapping[str, LabelRule],
        kwargs: dict[str, Any],
    ) -> None:
        self.kind = kind
        self.name = name
        self.label_names = tuple(label_names)
        self.limit = limit
        self.rules = dict(rules)
        self._kwargs = dict(kwargs, documentation=documentation)
        self._bind()

    def _bind(self) -> None:
        """(Re)create the prometheus metric in obskit's current registry."""
        self._metric: M = self.kind(
            self.name, labelnames=self.label_names, registry=_state.registry, **self._kwargs
        )
        metric = self._metric
        if self.label_names:
            self._guard: Guard[M] | None = Guard(
                self.name,
                self.label_names,
                lambda values: metric.labels(*values),
                limit=self.limit,
                rules=self.rules,
            )
            self._cache: dict[tuple[Any, ...], M] = self._guard._cache
        else:
            self._guard = None
            self._cache = {}

    def labels(self, *values: Any) -> M:
        """The child for these label values (positional, in declaration order): of the
        instrument's class, the overflow series' too."""
        # The guard's cache is read here directly: one dict lookup is the whole hot path.
        try:
            return self._cache[values]
        except (KeyError, TypeError):  # new label set, or an unhashable value to normalise
            guard = self._guard
            if guard is None:
                raise ValueError(f"metric {self.name} has no labels") from None
            return guard.labels(*values)

    def kept(self, *values: Any) -> tuple[Any, bool]:
        """The child for these label values and whether it is the overflow series, for a caller
        that keeps it (cached writers): a fold is not counted here, so the caller counts each
        write to a folded child with :meth:`count_folded` (see :func:`counting`)."""
        guard = self._guard
        if guard is None:
            raise ValueError(f"metric {self.name} has no labels")
        child = guard.peek(*values)
        return child, child is guard._overflow

    def count_folded(self, observations: int = 1) -> None:
        """Count observations written to the overflow series through a kept child."""
        if self._guard is not None:
            self._guard.count_folded(observations)

    def folded(self, child: Any) -> bool:
        """Whether ``child`` is the overflow series. Each observation folded into it is counted
        when it passes the guard, so callers that keep children must not keep this one."""
        guard = self._guard
        return guard is not None and child is guard._overflow

    def remove(self, *values: Any) -> bool:
        """Remove the series of these label values, as ``prometheus_client``'s ``remove`` does,
        for what no longer exists (a closed loop, a disposed pool): the next scrape no longer
        shows it and the label set frees its place under the limit. Whether it existed.

        Under multi-process metrics a worker's last value stays in its file until the worker
        exits, as with ``prometheus_client``: set a gauge to its idle value before removing it.
        """
        guard = self._guard
        if guard is None:
            raise ValueError(f"metric {self.name} has no labels")
        return guard.remove(values, self._drop)

    def _drop(self, key: tuple[str, ...]) -> None:
        metric = self._metric
        children = getattr(metric, "_metrics", None)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not isinstance(children, dict):
            metric.remove(*key)
            return
        # prometheus_client's remove() warns under multi-process metrics (a warning that
        # raises where warnings are errors) for what the docstring above says; it then drops
        # the child the same way.
        with metric._lock:
            children.pop(key, None)

    @property
    def metric(self) -> M:
        """The underlying prometheus_client metric (for label-less use and introspection)."""
        return self._metric

    def series_count(self) -> int:
        """Distinct label sets recorded so far."""
        return 0 if self._guard is None else self._guard.series_count()

    # Label-less shortcuts, each for the kinds that have it: the self types tell a checker
    # (orders.set(3) on a counter is an error); at run time prometheus_client's own method is
    # called, as it was.
    @overload
    def inc(self: Instrument[Counter], amount: float = 1.0) -> None: ...
    @overload
    def inc(self: Instrument[Gauge], amount: float = 1.0) -> None: ...
    def inc(self: Instrument[Any], amount: float = 1.0) -> None:
        """Increment a label-less counter or gauge."""
        self._metric.inc(amount)

    def dec(self: Instrument[Gauge], amount: float = 1.0) -> None:
        """Decrement a label-less gauge."""
        self._metric.dec(amount)

    def set(self: Instrument[Gauge], value: float) -> None:
        """Set a label-less gauge."""
        self._metric.set(value)

    def observe(
        self: Instrument[Histogram], value: float, exemplar: dict[str, str] | None = None
    ) -> None:
        """Observe into a label-less histogram. An exemplar OpenMetrics cannot carry (a label
        name outside ``[a-zA-Z_][a-zA-Z0-9_]*``, text that is not UTF-8, more than 128
        characters in all) is left out, with one warning, instead of breaking every scrape."""
        if exemplar:
            exemplar = writable_exemplar(exemplar)
        self._metric.observe(value, exemplar)


_EXEMPLAR_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def writable_exemplar(exemplar: Mapping[str, str]) -> dict[str, str] | None:
    """``exemplar`` if OpenMetrics can write it, else None (warned about once)."""
    try:
        size = 0
        for name, value in exemplar.items():
            if not (
                name.__class__ is str and value.__class__ is str and _EXEMPLAR_NAME.fullmatch(name)
            ):
                break
            name.encode("utf-8")  # a lone surrogate raises
            value.encode("utf-8")
            size += len(name) + len(value)
        else:
            if size <= 128:  # OpenMetrics' bound on an exemplar's label set, in characters
                return dict(exemplar)
    except (UnicodeEncodeError, AttributeError, TypeError):
        pass
    _selfmetrics.warn_once(
        "exemplar_dropped",
        "obskit: an exemplar OpenMetrics cannot carry was left out (label names must match "
        "[a-zA-Z_][a-zA-Z0-9_]*, text must be UTF-8, 128 characters in all)",
    )
    return None


def _default_limit() -> int:
    """The ``cardinality_limit`` option, also before ``configure()`` (from the environment)."""
    runtime = _state.runtime
    if runtime is not None:
        return runtime.config.cardinality_limit
    from obskit.config import ConfigError, load_config

    try:
        return load_config().cardinality_limit
    except ConfigError:
        return 1000  # configure() will report the bad value


def _bounds(kind: type[Any], kwargs: Mapping[str, Any]) -> tuple[float, ...] | None:
    """A histogram's bucket bounds as prometheus_client makes them (floats, ``+Inf`` last)."""
    if kind is not Histogram:
        return None
    bounds = [float(bound) for bound in kwargs.get("buckets", Histogram.DEFAULT_BUCKETS)]
    if not bounds or bounds[-1] != float("inf"):
        bounds.append(float("inf"))
    return tuple(bounds)


def _differences(
    existing: Instrument[Any],
    limit: int | None,
    rules: Mapping[str, LabelRule],
    kwargs: Mapping[str, Any],
) -> list[str]:
    """What a re-declaration of ``existing`` (same kind and labels) asks for differently, each
    as ``what first-value (now new-value)``; the help text aside."""
    names = existing.label_names
    differences = []
    first_bounds = _bounds(existing.kind, existing._kwargs)
    now_bounds = _bounds(existing.kind, kwargs)
    if first_bounds != now_bounds:
        differences.append(f"buckets {list(first_bounds or ())} (now {list(now_bounds or ())})")
    # A label without a rule has the default one: LabelRule() given or not is the same.
    changed = [n for n in names if existing.rules.get(n, LabelRule()) != rules.get(n, LabelRule())]
    if changed:
        first_rules = {n: existing.rules.get(n, LabelRule()) for n in changed}
        now_rules = {n: rules.get(n, LabelRule()) for n in changed}
        differences.append(f"rules {first_rules} (now {now_rules})")
    # No limit given means the default one: whatever it is now (configure() may have changed
    # it since), the declaration does not ask for another one.
    if limit is not None and limit != existing.limit:
        differences.append(f"limit {existing.limit} (now {limit})")
    mode = existing._kwargs.get("multiprocess_mode")
    if mode != kwargs.get("multiprocess_mode"):
        differences.append(f"multiprocess_mode {mode!r} (now {kwargs.get('multiprocess_mode')!r})")
    return differences


def _declare(
    kind: type[M],
    name: str,
    documentation: str,
    labels: Sequence[str],
    limit: int | None,
    rules: Mapping[str, RuleSpec] | None,
    allow_unbounded: Iterable[str],
    kwargs: dict[str, Any],
) -> Instrument[M]:
    name = check_metric_name(name)
    if kind is Counter and name.endswith("_total"):
        # prometheus_client drops the suffix (and writes it back on exposition): ``orders`` and
        # ``orders_total`` are one counter, and one declaration.
        name = name[: -len("_total")]
    label_names = check_label_names(name, labels, allow_unbounded)
    _check_not_obskits(kind, name, label_names)
    parsed = {k: LabelRule.of(v) for k, v in (rules or {}).items()}
    unknown = set(parsed) - set(label_names)
    if unknown:
        raise ValueError(f"rules name labels {sorted(unknown)} that {name!r} does not declare")
    with _state.lock:
        existing = _state.instruments.get(name)
        if existing is None:
            return _create(kind, name, documentation, label_names, limit, parsed, kwargs)
        if existing.kind is not kind or existing.label_names != label_names:
            raise ValueError(
                f"metric {name!r} is already declared as {existing.kind.__name__}"
                f"{list(existing.label_names)}; cannot redeclare it as "
                f"{kind.__name__}{list(label_names)}"
            )
        differences = _differences(existing, limit, parsed, kwargs)
        if differences:
            # Returning the first declaration would silently record with what this one did not
            # ask for (other buckets, no allow-list, another limit or gauge mode).
            raise ValueError(
                f"metric {name!r} is already declared with {'; '.join(differences)}: one name "
                f"has one definition. Declare the metric once (at module level) and import it "
                f"where it is used, or declare it alike everywhere."
            )
        first_help = existing._kwargs.get("documentation")
    if documentation != first_help:
        # The help text changes no sample: the first is kept (the exposition has one), with a
        # warning -- given outside the lock, as it runs the application's log handlers.
        _selfmetrics.warn_once(
            f"redeclared_help:{name}",
            "obskit: metric %s is declared again with another help text (%r); the first one "
            "(%r) is kept",
            name,
            documentation,
            first_help,
        )
    return existing


#: obskit's own families (RED, USE, event-loop lag): declared again, they must be declared as
#: obskit declares them -- which gives obskit's instrument -- or obskit's own declaration would
#: fail later, its metrics lost with only a warning.
_OBSKITS: dict[str, tuple[type[Any], tuple[str, ...], str]] = {
    "function_calls": (Counter, ("function", "module", "result"), "@obskit.red"),
    "function_duration_seconds": (Histogram, ("function", "module"), "@obskit.red"),
    "http_requests": (Counter, ("method", "route", "status"), "the HTTP adapters"),
    "http_request_duration_seconds": (Histogram, ("method", "route"), "the HTTP adapters"),
    "http_requests_in_flight": (Gauge, ("method", "route"), "the HTTP adapters"),
    **dict.fromkeys(
        ("resource_in_use", "resource_capacity", "resource_utilization_ratio", "resource_waiters"),
        (Gauge, ("resource",), "the USE trackers"),
    ),
    "resource_wait_seconds": (Histogram, ("resource",), "the USE trackers"),
    "resource_errors": (Counter, ("resource", "reason"), "the USE trackers"),
    "asyncio_event_loop_lag_seconds": (Gauge, ("loop",), "the runtime metrics"),
    "asyncio_event_loop_lateness_seconds": (Histogram, ("loop",), "the runtime metrics"),
}


def _check_not_obskits(kind: type[Any], name: str, label_names: tuple[str, ...]) -> None:
    """Refuse a declaration that would take one of obskit's own metric names."""
    if name.startswith("obskit_"):
        raise ValueError(
            f"obskit: metric name {name!r}: the obskit_ prefix is for obskit's self-metrics; "
            f"name it without it"
        )
    own = _OBSKITS.get(name)
    if own is not None and (kind, label_names) != own[:2]:
        raise ValueError(
            f"obskit: metric {name!r} is obskit's own (recorded by {own[2]}, a "
            f"{own[0].__name__} with labels {list(own[1])}); declare yours under another name"
        )


def _create(
    kind: type[M],
    name: str,
    documentation: str,
    label_names: tuple[str, ...],
    limit: int | None,
    rules: dict[str, LabelRule],
    kwargs: dict[str, Any],
) -> Instrument[M]:
    """A new instrument, in the declaration table; called with ``_state.lock`` held."""
    if limit is None:
        limit = _default_limit()
    if limit <= 0:
        raise ValueError(f"limit for metric {name!r} must be a positive integer, got {limit}")
    instrument = Instrument(kind, name, documentation, label_names, limit, rules, kwargs)
    _state.instruments[name] = instrument
    return instrument


def counter(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    limit: int | None = None,
    rules: Mapping[str, RuleSpec] | None = None,
    allow_unbounded: Iterable[str] = (),
) -> Instrument[Counter]:
    """Declare a counter (exposed as ``NAME_total``).

    Args:
        name: Prometheus metric name (``_total`` is added on exposition).
        documentation: the HELP text.
        labels: label names (a list or tuple, ``["method"]``: not one str); each value later
            passes the cardinality guard.
        limit: distinct label sets at most (default: the ``cardinality_limit`` option).
        rules: per-label :class:`LabelRule`, allowed values or a pattern.
        allow_unbounded: label names from the deny-list you vouch are bounded.

    Raises:
        CardinalityError: a label name is unbounded by nature.
        TypeError: ``labels`` is one str.
    """
    return _declare(Counter, name, documentation, labels, limit, rules, allow_unbounded, {})


def gauge(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    limit: int | None = None,
    rules: Mapping[str, RuleSpec] | None = None,
    allow_unbounded: Iterable[str] = (),
    multiprocess_mode: Literal[
        "all",
        "liveall",
        "min",
        "livemin",
        "max",
        "livemax",
        "sum",
        "livesum",
        "mostrecent",
        "livemostrecent",
    ] = "livesum",
) -> Instrument[Gauge]:
    """Declare a gauge; see :func:`counter`. ``multiprocess_mode`` applies under gunicorn."""
    return _declare(
        Gauge,
        name,
        documentation,
        labels,
        limit,
        rules,
        allow_unbounded,
        {"multiprocess_mode": multiprocess_mode},
    )


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    buckets: Sequence[float] | None = None,
    limit: int | None = None,
    rules: Mapping[str, RuleSpec] | None = None,
    allow_unbounded: Iterable[str] = (),
) -> Instrument[Histogram]:
    """Declare a histogram; see :func:`counter`. ``buckets`` are upper bounds in seconds."""
    kwargs: dict[str, Any] = {}
    if buckets is not None:
        kwargs["buckets"] = tuple(buckets)
    return _declare(Histogram, name, documentation, labels, limit, rules, allow_unbounded, kwargs)


def counting(
    instrument: Instrument[Any], folded: bool, write: Callable[..., None]
) -> Callable[..., None]:
    """``write`` (a cached writer of one of ``instrument``'s children) as it is, or -- when that
    child is the overflow series, which every caller past the limit shares -- one that counts
    each write as a folded observation."""
    if not folded:
        return write
    count = instrument.count_folded

    def folded_write(*args: Any) -> None:
        count()
        write(*args)

    return folded_write


def instruments() -> list[Instrument[Any]]:
    """Every metric declared through obskit, for reporting (``obskit cardinality``)."""
    return list(_state.instruments.values())


def rebind_all() -> None:
    """Re-create every declared metric in the current registry (after a reset)."""
    for instrument in list(_state.instruments.values()):
        instrument._bind()
