"""The embedded default: spans appended to a local JSON-lines file, one span per line.

Each line is an OTLP/JSON ``Span`` (lowerCamelCase field names, hex ``traceId``/``spanId``, enums
as integers, 64-bit times as strings, per the OTLP/JSON encoding) with two extra keys,
``resource`` and ``scope``, so a line stands on its own. ``obskit traces FILE`` renders them. The
file is rotated to ``FILE.1`` past ``max_bytes``, so disk use stays bounded.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from typing import Any

from google.protobuf.message import DecodeError

__all__ = ["JsonLinesSpanSink", "request_to_json_lines"]

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _fix_ids(obj: dict[str, Any]) -> dict[str, Any]:
    import base64

    for key in _ID_FIELDS:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()
    return obj


def request_to_json_lines(request: bytes) -> list[str]:
    """Decode an ``ExportTraceServiceRequest`` into OTLP/JSON lines, one per span."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    message = ExportTraceServiceRequest.FromString(request)
    lines = []
    for rs in message.resource_spans:
        resource = MessageToDict(rs.resource)
        for ss in rs.scope_spans:
            scope = MessageToDict(ss.scope)
            for span in ss.spans:
                doc = _fix_ids(MessageToDict(span, use_integers_for_enums=True))
                for link in doc.get("links", ()):
                    _fix_ids(link)
                doc["resource"] = resource
                doc["scope"] = scope
                lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
    return lines


class JsonLinesSpanSink:
    """Append spans to ``path`` as JSON lines; rotate to ``path.1`` past ``max_bytes``."""

    name = "jsonl"

    def __init__(self, path: str, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a lock the parent's export thread held at fork time stays held."""
        self._lock = threading.Lock()

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Write the spans of one request; False if the file cannot be written."""
        try:
            # Bytes, so that the rotation bound counts what the file holds, not characters.
            data = "".join(line + "\n" for line in request_to_json_lines(request)).encode(
                "utf-8", "replace"
            )
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                try:
                    info = os.lstat(self.path)
                    # Only a regular file is rotated: a directory, a device (/dev/stdout) or a
                    # link someone put there is not obskit's to move.
                    if stat.S_ISREG(info.st_mode) and info.st_size + len(data) > self.max_bytes:
                        os.replace(self.path, self.path + ".1")
                except FileNotFoundError:
                    pass
                with open(self.path, "ab") as fh:
                    fh.write(data)
            return True
        except (OSError, ValueError, DecodeError):  # DecodeError: bytes protobuf refuses
            return False

    def shutdown(self) -> None:
        """Nothing held open between writes."""


class MemorySpanSink:
    """Keep encoded requests in memory (used by :mod:`obskit.testing`), bounded."""

    name = "memory"

    def __init__(self, max_requests: int = 10_000) -> None:
        self.requests: list[bytes] = []
        self.max_requests = max_requests
        self._lock = threading.Lock()

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Store the request."""
        with self._lock:
            if len(self.requests) >= self.max_requests:
                return False
            self.requests.append(request)
        return True

    def shutdown(self) -> None:
        """Nothing to release."""
