"""Cost of the JSON-lines span file's conversion, per span, on the export thread.

With no endpoint configured (the embedded default, ``make demo``'s), the export thread turns
each batch -- an ``ExportTraceServiceRequest`` of up to 512 encoded spans -- into OTLP/JSON
lines. That thread shares the GIL with the request threads, so its CPU time is taken from them
and its turns show in their tail latency. Variants, on the same batch of SERVER spans made by
obskit's request pipeline (eight attributes each, as a routed GET has):

- ``message_to_dict``: protobuf's generic ``MessageToDict`` per span and ``json.dumps`` of the
  dict with the resource and scope in it -- what obskit did until 2026-11-25;
- ``obskit``: ``obskit.exporters.jsonl.request_to_json_lines`` -- the same lines, written from
  the fields, the resource and scope encoded once per batch.

Run: ``python benchmarks/bench_jsonl.py [--spans N] [--rounds R]``; prints the median and
best microseconds per span over the rounds.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable
from typing import Any


def _batch(spans: int) -> bytes:
    from obskit.http._pipeline import HttpTelemetry
    from obskit.testing import capture

    headers = {"user-agent": "wrk", "host": "localhost:8000"}
    with capture(service_name="bench-jsonl", sampler="always_on") as cap:
        telemetry = HttpTelemetry()
        for i in range(spans):
            request = telemetry.start("GET", f"/items/{i}", headers.get, route="/items/{id}")
            assert request is not None
            request.finish(200)
        requests = cap.requests()
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    merged = ExportTraceServiceRequest()
    for request in requests:
        merged.resource_spans.extend(request.resource_spans)
    return merged.SerializeToString()  # type: ignore[no-any-return]


def message_to_dict_lines(request: bytes) -> list[str]:
    """The lines as obskit wrote them until 2026-11-25: ``MessageToDict`` per span (ids in
    hex), the resource and scope dicts in each line -- the reference the tests compare with."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    def ids(doc: dict[str, Any]) -> dict[str, Any]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in doc:
                doc[key] = base64.b64decode(doc[key]).hex()
        return doc

    message = ExportTraceServiceRequest.FromString(request)
    lines = []
    for rs in message.resource_spans:
        resource = MessageToDict(rs.resource)
        for ss in rs.scope_spans:
            scope = MessageToDict(ss.scope)
            for span in ss.spans:
                doc = ids(MessageToDict(span, use_integers_for_enums=True))
                for link in doc.get("links", ()):
                    ids(link)
                doc["resource"] = resource
                doc["scope"] = scope
                lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    from obskit.exporters.jsonl import request_to_json_lines

    batch = _batch(args.spans)
    variants: dict[str, Callable[[bytes], list[str]]] = {
        "message_to_dict": message_to_dict_lines,
        "obskit": request_to_json_lines,
    }
    same = [json.loads(line) for line in message_to_dict_lines(batch)] == [
        json.loads(line) for line in request_to_json_lines(batch)
    ]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, convert in variants.items():  # interleaved: the host's noise hits both
            start = time.perf_counter()
            convert(batch)
            times[name].append((time.perf_counter() - start) * 1e6 / args.spans)
    print(f"{args.spans} spans per batch, {args.rounds} rounds; same documents: {same}")
    print("| variant | median us/span | best us/span |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} |")


if __name__ == "__main__":
    main()
