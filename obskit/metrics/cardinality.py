"""The cardinality guard every obskit metric goes through.

prometheus_client keeps one child per distinct label set, forever: one unbounded label (a raw path,
a user id) grows the process and the Prometheus server without limit. obskit puts a hard cap on
each metric, as the OpenTelemetry metrics SDK specifies for its cardinality limit: past
``limit`` distinct label sets, new combinations fold into a single overflow series whose label
values are all ``__overflow__``, so totals stay right while the series count stays bounded. Each
folded observation is counted in ``obskit_cardinality_overflow_total{metric}`` and the first one
per metric is logged.

Per label, values can be closed further: an allow-list (a set of values or a regular expression;
anything else becomes ``__other__``) and a maximum length. Label *names* that are unbounded by
nature (``user_id``, ``request_id``, ``email``, ``ip``, ``trace_id``...) are refused when the metric
is declared, in any spelling (``User.ID``, ``user-id``), and so are metric and label names outside
Prometheus' classic character set (:func:`check_metric_name`, :func:`check_label_names`).

The hot path -- a label set already seen -- is one tuple build and one dict lookup; everything
else (normalising odd values, allow-lists, the cap) runs only for label sets not yet cached.
Under multi-process metrics the cap holds across the processes (:mod:`obskit.metrics._shared`).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from obskit import _selfmetrics
from obskit.metrics._shared import SharedLabelSets

__all__ = [
    "DENIED_LABELS",
    "OTHER",
    "OVERFLOW",
    "CardinalityError",
    "Guard",
    "LabelRule",
    "check_label_names",
    "check_metric_name",
]

OVERFLOW = "__overflow__"
OTHER = "__other__"

#: Label names refused at declaration: their values are unbounded by nature.
DENIED_LABELS = frozenset(
    {
        "user_id",
        "userid",
        "user",
        "customer_id",
        "account_id",
        "request_id",
        "session_id",
        "correlation_id",
        "transaction_id",
        "order_id",
        "trace_id",
        "span_id",
        "email",
        "ip",
        "client_ip",
        "ip_address",
        "remote_addr",
        "uuid",
        "id",
        "token",
        "url",
        "path",
        "query",
        "timestamp",
    }
)

_DEFAULT_MAX_LENGTH = 128


class CardinalityError(ValueError):
    """A metric was declared with a label that would make its cardinality unbounded."""


@dataclass(frozen=True, init=False)
class LabelRule:
    """Constraints on one label's values.

    Args:
        allow: the values allowed (any collection of them) or a regular expression they must
            fully match (a ``str`` or a compiled pattern); anything else is recorded as
            ``__other__``. Held as a frozenset or a compiled pattern.
        max_length: longer values are truncated.
    """

    allow: frozenset[str] | re.Pattern[str] | None
    max_length: int

    # Not the dataclass's __init__: that would type ``allow`` as the form it is held in, and a
    # checker would refuse the list or the str pattern the docs show.
    def __init__(
        self,
        allow: Iterable[str] | str | re.Pattern[str] | None = None,
        max_length: int = _DEFAULT_MAX_LENGTH,
    ) -> None:
        # Accept what of() accepts, so LabelRule(allow=["a", "b"]) or allow=r"[0-9]+" cannot
        # fail later inside the caller's labels() call.
        held: frozenset[str] | re.Pattern[str] | None
        if allow is None or isinstance(allow, re.Pattern):
            held = allow
        elif isinstance(allow, str):
            held = re.compile(allow)
        else:
            # A frozenset too: its values are compared with label text, so they must be text --
            # the text a label value of the same object is recorded as (a (str, Enum) member
            # as its value).
            held = frozenset(map(_allowed_text, allow))
        object.__setattr__(self, "allow", held)
        object.__setattr__(self, "max_length", max_length)
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")

    @classmethod
    def of(cls, spec: LabelRule | Iterable[str] | str | re.Pattern[str] | None) -> LabelRule:
        """Accept a rule, a collection of allowed values or a pattern."""
        if spec is None:
            return cls()
        if isinstance(spec, LabelRule):
            return spec
        if isinstance(spec, re.Pattern):
            return cls(allow=spec)
        if isinstance(spec, str):
            return cls(allow=re.compile(spec))
        return cls(allow=frozenset(map(_allowed_text, spec)))


def _allowed_text(value: object) -> str:
    """An allow-list entry as the label text it matches (see :func:`_text`)."""
    return str.__str__(value) if isinstance(value, str) else str(value)


#: A lone surrogate (text decoded with ``surrogateescape``, as ``os.fsdecode`` does).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: object, max_length: int) -> str:
    """Any value as a bounded label string; never raises."""
    if value.__class__ is str:
        text: str = value
    elif isinstance(value, str):
        # A str subclass -- a (str, Enum) member, the FastAPI/pydantic idiom -- is its string
        # value, as the exact str equal to it: the cache is looked up by equality, so
        # Status.ok and "ok" must be one series whichever is seen first (str() would give
        # "Status.ok").
        text = str.__str__(value)
    elif value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        try:
            text = str(value)
        except Exception:
            text = f"<unprintable {type(value).__name__}>"
    if len(text) > max_length:
        text = text[:max_length]
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (os.fsdecode): every scrape would fail
            # U+FFFD, as a UTF-8 decoder writes what it cannot read -- not "?", which would
            # merge "report-\udcff.csv" with a real "report-?.csv".
            text = _SURROGATE.sub("\ufffd", text)
    return text


C = TypeVar("C")


class _NoTimer:
    """What :class:`_Detached`'s ``time()`` and friends give: a context manager and a
    decorator that time nothing."""

    def __enter__(self) -> _NoTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, function: Any) -> Any:
        return function


class _Detached:
    """The child a label set gets when its series cannot be made -- prometheus_client opening
    its file in a multi-process directory removed under the running app: writes go nowhere and
    the failure is counted (``obskit_internal_errors_total{component="metric_child"}``) rather
    than raised into the app's code. Never kept: the next use of the label set tries again."""

    def inc(self, amount: float = 1, exemplar: Any = None) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def set_to_current_time(self) -> None:
        pass

    def set_function(self, function: Any) -> None:
        pass

    def observe(self, amount: float, exemplar: Any = None) -> None:
        pass

    def time(self) -> _NoTimer:
        return _NoTimer()

    def track_inprogress(self) -> _NoTimer:
        return _NoTimer()

    def count_exceptions(self, exception: Any = Exception) -> _NoTimer:
        return _NoTimer()


DETACHED: Any = _Detached()


@dataclass(eq=False)  # identity: guards live in a WeakSet (renewed locks after fork)
class Guard(Generic[C]):
    """Bounded label sets for one metric.

    ``labels(*values)`` returns the metric's child for those values, creating it through
    ``make_child(normalised_values)`` only while the metric has fewer than ``limit`` series.
    """

    metric: str
    label_names: tuple[str, ...]
    make_child: Any  # Callable[[tuple[str, ...]], C]
    limit: int = 1000
    rules: Mapping[str, LabelRule] = field(default_factory=dict)
    _cache: dict[tuple[Any, ...], C] = field(default_factory=dict, init=False, repr=False)
    _series: dict[tuple[str, ...], C] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _overflow: C | None = field(default=None, init=False, repr=False)
    _shared: SharedLabelSets | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _guards.add(self)
        self._rules = tuple(self.rules.get(n, LabelRule()) for n in self.label_names)
        metrics = _selfmetrics.current()
        self._overflow_count = metrics.cardinality_overflow.labels(self.metric)
        metrics.cardinality_limit.labels(self.metric).set(self.limit)
        metrics.cardinality_series.labels(self.metric).set(0)

    def labels(self, *values: Any) -> C:
        """The child for ``values``; folded into the overflow series past the limit."""
        try:
            child = self._cache.get(values)
        except TypeError:  # an unhashable label value
            child = None
        if child is not None:
            return child
        return self._admit(values)

    def peek(self, *values: Any) -> C:
        """:meth:`labels` without counting a fold, for a caller that keeps the child and
        counts each write to the overflow series itself (:meth:`count_folded`)."""
        return self._admit(values, count=False)

    def count_folded(self, observations: int = 1) -> None:
        """Count observations written to the overflow series through a kept child."""
        self._overflow_count.inc(observations)
        self._warn_folding()

    def _normalise(self, values: tuple[Any, ...]) -> tuple[str, ...]:
        out = []
        for value, rule in zip(values, self._rules, strict=True):
            text = _text(value, rule.max_length)
            allow = rule.allow
            if allow is not None:
                if isinstance(allow, frozenset):
                    if text not in allow:
                        text = OTHER
                elif allow.fullmatch(text) is None:
                    text = OTHER
            out.append(text)
        return tuple(out)

    def _admit(self, values: tuple[Any, ...], count: bool = True) -> C:
        if len(values) != len(self.label_names):
            raise ValueError(
                f"{self.metric} takes {len(self.label_names)} label values "
                f"{self.label_names}, got {len(values)}"
            )
        key = self._normalise(values)
        failure: list[Exception] = []
        with self._lock:
            known = self._series.get(key)
            if known is not None:
                child = known
            elif len(self._series) >= self.limit or not self._admitted_by_all(key, failure):
                child = self._fold(count, failure)
            else:
                try:
                    child = self.make_child(key)
                except Exception as exc:  # the multi-process directory removed under the app
                    failure.append(exc)
                    child = DETACHED  # not kept: the next use tries again
                else:
                    self._series[key] = child
                    if self._shared is None or failure:  # else _admitted_by_all reported it
                        self._report_series(len(self._series))
            # Cache the caller's raw values too, but only a bounded number of aliases: raw values
            # that normalise to an admitted series must not grow the cache without bound. Only
            # exact str values within their length: 1, True and 1.0 are one dict key but three
            # label values, and a value cut short must not be kept alive at full length.
            # Never the overflow child: each observation folded into it is counted here.
            if (
                child is not self._overflow
                and child is not DETACHED
                and len(self._cache) < 2 * self.limit
                and all(
                    value.__class__ is str and len(value) <= rule.max_length
                    for value, rule in zip(values, self._rules, strict=True)
                )
            ):
                self._cache[values] = child
        if failure:  # reported outside the lock, as the warning below (it runs log handlers)
            component = "metric_child" if child is DETACHED else "cardinality_shared"
            _selfmetrics.internal_error(component, failure[-1])
        if child is self._overflow and count:
            self._warn_folding()
        return child

    def _admitted_by_all(self, key: tuple[str, ...], failure: list[Exception]) -> bool:
        """Under multi-process metrics, whether the processes sharing the directory leave
        ``key`` a place under the limit (see :mod:`obskit.metrics._shared`); called with the
        lock held, for a label set new to this process. A failure to use the shared file is
        put in ``failure`` and admits the key (the per-process limit still holds)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return True
        shared = self._shared
        if shared is not None and shared.full and shared.directory == directory:
            return key in shared.known  # the file only grows: nothing to read or report
        try:
            if shared is None or shared.directory != directory:
                shared = self._shared = SharedLabelSets(
                    directory, self.metric, self.limit, lambda: list(self._series)
                )
            before = len(shared.known)
            admitted = shared.admit(key)
            if len(shared.known) != before:
                # Every process reports the shared count (the gauge is "max" across workers).
                self._report_series(len(shared.known))
            return admitted
        except Exception as exc:  # any failure (OSError, a hostile file): the local limit
            failure.append(exc)
            return True

    def _report_series(self, count: int) -> None:
        _selfmetrics.current().cardinality_series.labels(self.metric).set(count)

    def _fold(self, count: bool, failure: list[Exception]) -> Any:
        # Called with the lock held.
        overflow = self._overflow
        if overflow is None:
            # Made as a new series is (see _admit): a failure -- the multi-process directory
            # removed under the app -- gives the do-nothing child, not kept, and is reported
            # by the caller; the next fold tries again.
            try:
                overflow = self._overflow = self.make_child((OVERFLOW,) * len(self.label_names))
            except Exception as exc:
                failure.append(exc)
                return DETACHED
        if count:
            self._overflow_count.inc()
        return overflow

    def _warn_folding(self) -> None:
        # Called after the lock is released: the warning runs the application's log handlers,
        # and one that counts with this very metric would otherwise deadlock on the lock.
        _selfmetrics.warn_once(
            f"cardinality:{self.metric}",
            "obskit: metric %s reached its limit of %d label sets; new combinations are "
            "recorded with every label set to %s (counted in "
            "obskit_cardinality_overflow_total). Remove the unbounded label or raise the "
            "limit.",
            self.metric,
            self.limit,
            OVERFLOW,
        )

    def remove(self, values: tuple[Any, ...], drop: Any) -> bool:
        """Forget the series of ``values`` (normalised as :meth:`labels` does): ``drop(key)``
        removes the child from the metric, under the lock, so a concurrent :meth:`labels` cannot
        get the detached child. Whether there was such a series; the overflow series stays."""
        key = self._normalise(values)
        with self._lock:
            child = self._series.pop(key, None)
            if child is None:
                return False
            if child is self._overflow:
                # A real label value "__overflow__" was admitted, and later folds were given
                # its child: dropped now, it must not keep taking them (they would go to a
                # child the metric no longer has). The next fold makes the series afresh.
                self._overflow = None
            # Aliases of the key in the cache point at the same child; rare, so a scan is fine.
            for alias in [alias for alias, known in self._cache.items() if known is child]:
                del self._cache[alias]
            drop(key)
            # Under multi-process metrics the label set keeps its place in the shared file.
            shared = self._shared
            self._report_series(len(self._series) if shared is None else len(shared.known))
        return True

    def series_count(self) -> int:
        """Distinct label sets admitted so far (the overflow series not included)."""
        return len(self._series)


_guards: weakref.WeakSet[Guard[Any]] = weakref.WeakSet()


#: Set in a forked child: its guards' self-metric gauges are to be written again.
_republish = False


def _renew_locks() -> None:
    # A child forked while another thread held a guard's lock (admitting a label set) would
    # wait on it forever: the child has only the forking thread.
    global _republish
    for guard in list(_guards):
        guard._lock = threading.Lock()
    _republish = True


def republish_after_fork() -> None:
    """In a forked child, before its first collection: write each guard's
    ``obskit_cardinality_limit`` and ``_series`` again. Under prometheus_client's multi-process
    mode a child's values start from nothing, and these gauges were set in the parent only (a
    worker's OTLP push read 0 for every limit). Not done in the fork hook itself: writing takes
    prometheus_client's value lock, which another fork hook renews."""
    global _republish
    if not _republish:
        return
    _republish = False
    metrics = _selfmetrics.current()
    for guard in list(_guards):
        try:
            metrics.cardinality_limit.labels(guard.metric).set(guard.limit)
            shared = guard._shared
            count = len(shared.known) if shared is not None else len(guard._series)
            metrics.cardinality_series.labels(guard.metric).set(count)
        except Exception as exc:
            _selfmetrics.internal_error("cardinality_republish", exc)


os.register_at_fork(after_in_child=_renew_locks)


#: Prometheus' classic metric names, without the colon: it is reserved for recording rules
#: ("should not be used by exporters or direct instrumentation", Prometheus' naming guide).
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Where a camelCase or PascalCase name has a word boundary: ``requestId``, ``IPAddress``.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _suggest(name: str, label: bool) -> str:
    """``name`` made a classic Prometheus name: what to write instead."""
    text = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if label and text.startswith("__"):
        text = text.lstrip("_")
    if not text or text[0].isdigit():
        text = "_" + text
    return text


def _normalised(name: str) -> str:
    """A label name as the deny-list compares it: camelCase words split (``requestId`` as
    ``request_Id``), lowercased, anything outside ``[a-z0-9_]`` as ``_``."""
    return _NOT_NAME.sub("_", _CAMEL.sub("_", name).lower())


def check_metric_name(metric: object) -> str:
    """Refuse a metric name outside Prometheus' classic ``[a-zA-Z_][a-zA-Z0-9_]*``.

    prometheus_client accepts any UTF-8 name and escapes it when it writes the exposition
    (``orders.completed`` as ``orders_completed``): two names that escape alike -- or one that
    escapes onto obskit's own ``function_calls`` -- would give two families of one name, which
    promtool and the OpenMetrics parser refuse and Prometheus keeps only one of. Colons are
    left to recording rules, as Prometheus' naming guide asks of direct instrumentation.
    """
    if isinstance(metric, str) and _METRIC_NAME.fullmatch(metric):
        return metric
    if not isinstance(metric, str):
        raise ValueError(f"obskit: a metric name must be a str, got {metric!r}")
    raise ValueError(
        f"obskit: metric name {metric!r} is not a Prometheus metric name "
        f"([a-zA-Z_][a-zA-Z0-9_]*; colons are for recording rules). The exposition would "
        f"write it escaped, where it can collide with another metric of the escaped name (two "
        f"HELP/TYPE blocks for one name: scrapers refuse it or keep one of them). Name it "
        f"{_suggest(metric, label=False)!r} instead."
    )


def check_label_names(
    metric: str, label_names: Iterable[str], allow_unbounded: Iterable[str] = ()
) -> tuple[str, ...]:
    """Refuse label names that are unbounded by nature, in any spelling (compared lowercased,
    with anything outside ``[a-z0-9_]`` as ``_``: ``User.ID`` as ``user_id``), and names
    outside Prometheus' classic ``[a-zA-Z_][a-zA-Z0-9_]*`` or reserved (a leading ``__``),
    each with what to do instead.

    Raises:
        TypeError: ``label_names`` is one str (which would be split into one-letter labels).
    """
    if isinstance(label_names, str):
        raise TypeError(
            f"obskit: metric {metric!r}: labels takes a list of label names, not the str "
            f"{label_names!r} (it would declare one label per letter); write [{label_names!r}]"
        )
    names = tuple(label_names)
    allowed = set(allow_unbounded)
    repeated = sorted({name for name in names if names.count(name) > 1}, key=str)
    if repeated:
        # prometheus_client takes them, and writes two series of one label set whenever the
        # values differ only in a repeated label's position: Prometheus drops one of them.
        raise ValueError(
            f"obskit: metric {metric!r} declares label {repeated[0]!r} more than once; "
            f"each label name can appear once"
        )
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"obskit: metric {metric!r}: a label name must be a str, got {name!r}")
        if _normalised(name) in DENIED_LABELS and name not in allowed:
            vouched = name if _LABEL_NAME.fullmatch(name) else _suggest(name, label=True)
            rename = "" if vouched == name else f"name it {vouched!r}, "
            raise CardinalityError(
                f"obskit: metric {metric!r} declares label {name!r}, whose values are unbounded "
                f"by nature (one series per {name}); it would exhaust Prometheus memory. Record "
                f"it as a span attribute or a log field instead, or replace it with a bounded "
                f"category (e.g. a tier or a route template). If its values really are bounded, "
                f"{rename}pass allow_unbounded=[{vouched!r}] and an allow-list for it."
            )
        if not _LABEL_NAME.fullmatch(name):
            raise ValueError(
                f"obskit: metric {metric!r} declares label {name!r}, which is not a Prometheus "
                f"label name ([a-zA-Z_][a-zA-Z0-9_]*). The exposition would write it escaped, "
                f"where it can collide with another label of the escaped name. Name it "
                f"{_suggest(name, label=True)!r} instead."
            )
        if name.startswith("__"):
            raise ValueError(
                f"obskit: metric {metric!r} declares label {name!r}: label names starting "
                f"with '__' are reserved for Prometheus' internal use. Name it "
                f"{_suggest(name, label=True)!r} instead."
            )
    return names
