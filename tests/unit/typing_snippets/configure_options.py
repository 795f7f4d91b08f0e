"""``configure()`` and the adapters take the documented options, and refuse a misspelt option
or a value of the wrong type (each such line is marked)."""

from typing import Any

from fastapi import FastAPI
from flask import Flask

import obskit
from obskit.fastapi import instrument
from obskit.flask import Obskit

# As docs/*.md and the README write them.
obskit.configure(service_name="checkout", service_version="1.4.2", environment="prod")
obskit.configure(service_name="checkout", logging=True, traces_exporter="none")
obskit.configure(sampler="parentbased_traceidratio", sampler_arg=0.05, slow_threshold=1.0)
obskit.configure(service_name="items", logging=True, log_levels={"uvicorn.access": "INFO"})
obskit.configure(service_name="shop", trusted_proxy_hops=1, trust_forwarded_host=True)
obskit.configure(
    otlp_endpoint="http://collector:4318",
    otlp_protocol="grpc",
    otlp_headers={"authorization": "Bearer x"},
    metrics_exporter="prometheus+otlp",
    excluded_paths=["/metrics", "/healthz"],
    http_buckets=(0.1, 1.0),
    resource_attributes={"team": "payments", "replicas": 3},
    log_redact_keys="ssn,card",
    cardinality_limit=500,
    otlp_timeout=5,
    metrics_port=None,
)
settings: dict[str, Any] = {"service_name": "from-a-file"}
obskit.configure(**settings)
Obskit(Flask(__name__), service_name="checkout")
instrument(FastAPI(), service_name="checkout", logging=True)

# Refused.
obskit.configure(service_nme="x")  # mypy: call-arg
obskit.configure(sampler="traceidration")  # mypy: arg-type
obskit.configure(traces_exporter="zipkin")  # mypy: arg-type
obskit.configure(cardinality_limit="1000")  # mypy: arg-type
obskit.configure(log_level="VERBOSE")  # mypy: arg-type
obskit.configure(logging="yes")  # mypy: arg-type
Obskit(Flask(__name__), service_nme="checkout")  # mypy: call-arg
instrument(FastAPI(), sampler="always_of")  # mypy: arg-type
