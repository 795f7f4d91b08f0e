"""obskit's Prometheus families as OTLP metric data (:mod:`obskit.metrics.otlp_bridge`): what
each prometheus_client family type becomes, what is left out, and a family that cannot be
converted costing only itself. The push itself is tested end to end in
``tests/e2e/test_adversarial_otlp_signals.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from obskit.metrics.otlp_bridge import SCOPE, prometheus_scope
from obskit.testing import get_sample_value
from tests.child_process import child_env


def _by_name(scope: Any) -> dict[str, Any]:
    return {metric.name: metric for metric in scope.metrics}


def test_counters_histograms_and_the_types_left_out() -> None:
    counter = CounterMetricFamily("jobs", "Jobs.", labels=["queue"], created=1000.0)
    counter.add_metric(["mail"], 7.0, created=1000.5)
    histogram = HistogramMetricFamily("wait_seconds", "Wait.", labels=["pool"])
    histogram.add_metric(["db"], [("0.1", 2.0), ("1.0", 5.0), ("+Inf", 6.0)], sum_value=4.2)
    info = InfoMetricFamily("build", "Build.", value={"version": "1"})
    summary = SummaryMetricFamily("odd", "Odd.", count_value=1, sum_value=1.0)
    scope = prometheus_scope([counter, histogram, info, summary])
    assert SCOPE == scope.scope.name
    metrics = _by_name(scope)
    assert {"jobs", "wait_seconds"} == set(metrics)
    (point,) = metrics["jobs"].data.data_points
    assert ({"queue": "mail"}, 7.0, 1_000_500_000_000) == (
        dict(point.attributes),
        point.value,
        point.start_time_unix_nano,
    )
    assert metrics["jobs"].data.is_monotonic
    (bucketed,) = metrics["wait_seconds"].data.data_points
    assert ({"pool": "db"}, [0.1, 1.0], [2, 3, 1], 6, 4.2) == (
        dict(bucketed.attributes),
        list(bucketed.explicit_bounds),
        list(bucketed.bucket_counts),
        bucketed.count,
        bucketed.sum,
    )


def test_nothing_to_send_is_none() -> None:
    assert prometheus_scope([]) is None
    assert prometheus_scope([CounterMetricFamily("empty", "Nothing yet.", labels=["x"])]) is None


def test_a_family_that_cannot_be_converted_costs_only_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obskit import _state

    monkeypatch.setattr(_state, "raise_internal_errors", False)
    broken = Metric("broken", "Broken.", "counter")
    broken.samples = [object()]  # type: ignore[list-item]  # an app collector's bad sample
    good = CounterMetricFamily("fine", "Fine.", value=1.0)
    scope = prometheus_scope([broken, good])
    assert ["fine"] == [metric.name for metric in scope.metrics]
    assert 1.0 == get_sample_value(
        "obskit_internal_errors_total", {"component": "otlp_metrics_bridge"}
    )


_WORKER = """
import json, sys
import obskit
from obskit.metrics.otlp_bridge import prometheus_scope

obskit.counter("bridge_jobs", "Jobs.").inc(int(sys.argv[1]))
scope = prometheus_scope()
(metric,) = [m for m in scope.metrics if m.name == "bridge_jobs"]
print(json.dumps([p.value for p in metric.data.data_points]))
"""


def test_each_gunicorn_worker_sends_its_own_values(tmp_path: Path) -> None:
    """Under multi-process mode the registry a worker converts holds its own values (the
    backend adds the workers up), not the sum of every worker's, which each would send again."""
    env = child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    sent = []
    for count in (3, 5):
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_WORKER), str(count)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        sent.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [[3.0], [5.0]] == sent


# Found by a run under real gunicorn, since fixed: a histogram family of an app's collector whose
# buckets were not cumulative became negative OTLP bucket counts, and a gauge of 2**64 an int
# past int64: either failed the encoding of the whole push, obskit's and the SDK's metrics with it
def test_values_otlp_cannot_carry_cost_only_their_family(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics
    from opentelemetry.sdk.resources import Resource
    from prometheus_client.metrics_core import GaugeMetricFamily

    from obskit import _state

    monkeypatch.setattr(_state, "raise_internal_errors", False)
    odd = HistogramMetricFamily("odd_seconds", "Odd.", labels=[])
    odd.add_metric([], [("1.0", 5.0), ("+Inf", 3.0)], sum_value=1.0)
    huge = GaugeMetricFamily("huge", "Huge.", value=2**64)
    fine = CounterMetricFamily("fine", "Fine.", value=1)
    scope = prometheus_scope([odd, huge, fine])
    assert ["huge", "fine"] == [metric.name for metric in scope.metrics]
    encode_metrics(
        MetricsData([ResourceMetrics(Resource({}), [scope], "")])
    )  # the push encodes: nothing out of range


_FORKED = """
import gc, json, os
import obskit
from obskit.testing import get_sample_value

obskit.configure(service_name="gc", traces_exporter="none")
for _ in range(5):
    gc.collect()
parent = get_sample_value("obskit_runtime_gc_collections_total", {"generation": "2"})
pid = os.fork()
if pid == 0:
    child = get_sample_value("obskit_runtime_gc_collections_total", {"generation": "2"})
    pauses = get_sample_value("obskit_runtime_gc_pause_seconds_count", {"generation": "2"})
    print(json.dumps({"parent": parent, "child": child, "pauses": pauses}), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


# Found by a run under real gunicorn --preload, since fixed: a worker's GC collection counts and
# pause histogram started with its master's, so each worker's OTLP push sent the master's
# collections again (3 processes: 36 gen-1 collections for 12)
def test_a_forked_worker_counts_its_own_gc_collections() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKED],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["parent"] >= 5
    assert (0.0, 0.0) == (seen["child"], seen["pauses"])


_FORKED_GUARD = """
import json, os
import obskit
from obskit.metrics.otlp_bridge import prometheus_scope

orders = obskit.counter("guarded_orders", "Orders.", ["tier"], limit=50)
orders.labels("gold").inc()
pid = os.fork()
if pid == 0:
    found = {}
    for metric in prometheus_scope().metrics:
        if metric.name in ("obskit_cardinality_limit", "obskit_cardinality_series"):
            for point in metric.data.data_points:
                if point.attributes.get("metric") == "guarded_orders":
                    found[metric.name] = point.value
    print(json.dumps(found), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


# Found by a run under real gunicorn --preload, since fixed: prometheus_client's multi-process
# values start from nothing in a forked worker, and the guards' limit and series gauges were set
# in the master only: every worker's push said obskit_cardinality_limit 0
def test_a_forked_workers_guard_gauges_are_its_own(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKED_GUARD],
        env=child_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"obskit_cardinality_limit": 50.0, "obskit_cardinality_series": 1.0} == seen
