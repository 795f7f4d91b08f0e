"""``meter_provider()`` is the SDK's MeterProvider, or None (OTLP metrics off)."""

from typing_extensions import reveal_type

import obskit

provider = obskit.meter_provider()
reveal_type(provider)  # revealed: opentelemetry.sdk.metrics._internal.MeterProvider | None
provider.get_meter("x")  # mypy: union-attr
if provider is not None:
    provider.get_meter("checkout").create_counter("orders")
