"""``obskit.Instrument[M]``: ``labels()`` gives an ``M``; the label-less shortcuts exist only
for the kinds that have them."""

from prometheus_client import Counter, Gauge, Histogram
from typing_extensions import reveal_type

import obskit

orders: obskit.Instrument[Counter] = obskit.counter("orders", "Orders.", ["method"])
queued: obskit.Instrument[Gauge] = obskit.gauge("queued", "Jobs queued.")
latency: obskit.Instrument[Histogram] = obskit.histogram("latency_seconds", "Latency.")

reveal_type(orders.labels("card"))  # revealed: prometheus_client.metrics.Counter
orders.labels("card").inc()
orders.labels("card").set(3)  # mypy: attr-defined
by_route = obskit.histogram("route_seconds", "Per route.", ["route"])
reveal_type(by_route.labels("/"))  # revealed: prometheus_client.metrics.Histogram

obskit.counter("jobs", "Jobs.").inc()
queued.inc(2)
queued.dec()
queued.set(3)
latency.observe(0.2, {"trace_id": "abc"})
orders.set(3)  # mypy: misc
orders.dec()  # mypy: misc
orders.observe(1.0)  # mypy: misc
latency.inc()  # mypy: misc
queued.observe(1.0)  # mypy: misc
orders = obskit.gauge("orders_open", "Open orders.")  # mypy: assignment
