"""The embedded default: spans appended to a local JSON-lines file, one span per line.

Each line is an OTLP/JSON ``Span`` (lowerCamelCase field names, hex ``traceId``/``spanId``, enums
as integers, 64-bit times as strings, per the OTLP/JSON encoding) with two extra keys,
``resource`` and ``scope``, so a line stands on its own. ``obskit traces FILE`` renders them. The
file is rotated to ``FILE.1`` past ``max_bytes``, so disk use stays bounded.

Several processes (the workers of a pre-fork server) may write one file: each batch is written
under a lock on the file (``fcntl.lockf``), which covers the size check, the rotation and the
append, so two workers never both rotate (the second rename would move the first one's new file
onto ``FILE.1`` and lose the rotated one). It is a POSIX record lock rather than an ``flock``:
an ``flock`` belongs to the open file, which a child forked while the export thread holds it
shares, and keeps locked for as long as it lives. A write that fails half-way (a full disk) is cut
back off the file, so no torn line is left for the next batch's first span to be glued onto.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import os
import stat
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process per file
    fcntl = None  # type: ignore[assignment]

from google.protobuf.message import DecodeError

from obskit import _selfmetrics

__all__ = ["JsonLinesSpanSink", "request_to_json_lines", "unwritable", "warn_if_unwritable"]

#: How many times a batch is retried on a file that another process rotated between this one's
#: open and lock: once in practice.
_REOPENS = 8
#: Spans converted between two offers of the GIL to the request threads (see
#: :func:`request_to_json_lines`).
_SPANS_PER_TURN = 32

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: A str as a JSON string, as ``_dumps`` writes it (``ensure_ascii=False``): C's encoder.
_q = json.encoder.encode_basestring


def _double(value: float) -> Any:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _any_value(value: Any) -> dict[str, Any]:
    """An ``AnyValue`` as protobuf's ``MessageToDict`` gives it (int64 as a string, bytes in
    base64, non-finite doubles by name)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": value.string_value}
    if kind == "int_value":
        return {"intValue": str(value.int_value)}
    if kind == "bool_value":
        return {"boolValue": value.bool_value}
    if kind == "double_value":
        return {"doubleValue": _double(value.double_value)}
    if kind == "array_value":
        values = value.array_value.values
        return {"arrayValue": {"values": [_any_value(v) for v in values]} if values else {}}
    if kind == "kvlist_value":
        pairs = value.kvlist_value.values
        return {"kvlistValue": {"values": _attributes(pairs)} if pairs else {}}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode("ascii")}
    if kind == "string_value_strindex":
        return {"stringValueStrindex": value.string_value_strindex}
    return {}


def _attributes(pairs: Any) -> list[dict[str, Any]]:
    out = []
    for pair in pairs:
        item: dict[str, Any] = {}
        if pair.key:
            item["key"] = pair.key
        if pair.HasField("value"):
            item["value"] = _any_value(pair.value)
        if pair.key_strindex:
            item["keyStrindex"] = pair.key_strindex
        out.append(item)
    return out


def _event(event: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if event.time_unix_nano:
        doc["timeUnixNano"] = str(event.time_unix_nano)
    if event.name:
        doc["name"] = event.name
    if event.attributes:
        doc["attributes"] = _attributes(event.attributes)
    if event.dropped_attributes_count:
        doc["droppedAttributesCount"] = event.dropped_attributes_count
    return doc


def _link(link: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if link.trace_id:
        doc["traceId"] = link.trace_id.hex()
    if link.span_id:
        doc["spanId"] = link.span_id.hex()
    if link.trace_state:
        doc["traceState"] = link.trace_state
    if link.attributes:
        doc["attributes"] = _attributes(link.attributes)
    if link.dropped_attributes_count:
        doc["droppedAttributesCount"] = link.dropped_attributes_count
    if link.flags:
        doc["flags"] = link.flags
    return doc


def _attributes_json(pairs: Any) -> str:
    """``_attributes(pairs)`` as JSON text, string and int values (nearly all of a span's)
    written without the intermediate dicts."""
    parts = []
    for pair in pairs:
        value = pair.value
        kind = value.WhichOneof("value")
        key = pair.key
        if key and not pair.key_strindex:
            if kind == "string_value":
                parts.append(
                    f'{{"key":{_q(key)},"value":{{"stringValue":{_q(value.string_value)}}}}}'
                )
                continue
            if kind == "int_value":
                parts.append(f'{{"key":{_q(key)},"value":{{"intValue":"{value.int_value}"}}}}')
                continue
        parts.append(_dumps(_attributes((pair,))[0]))
    return "[" + ",".join(parts) + "]"


def _span_json(span: Any) -> list[str]:
    """The members of a ``Span`` as ``MessageToDict(span, use_integers_for_enums=True)`` gives
    them -- the same keys, values and order (field number), ids in hex -- as JSON text, in a
    fraction of its time: protobuf's generic converter and ``json.dumps`` of its dict cost
    about 60 us a span on the export thread (``benchmarks/bench_jsonl.py``), with the GIL,
    which the request threads then waited for (a soak review: p99 5-7x with the default
    file)."""
    parts = []
    if span.trace_id:
        parts.append(f'"traceId":"{span.trace_id.hex()}"')
    if span.span_id:
        parts.append(f'"spanId":"{span.span_id.hex()}"')
    if span.trace_state:
        parts.append(f'"traceState":{_q(span.trace_state)}')
    if span.parent_span_id:
        parts.append(f'"parentSpanId":"{span.parent_span_id.hex()}"')
    if span.name:
        parts.append(f'"name":{_q(span.name)}')
    if span.kind:
        parts.append(f'"kind":{span.kind}')
    if span.start_time_unix_nano:
        parts.append(f'"startTimeUnixNano":"{span.start_time_unix_nano}"')
    if span.end_time_unix_nano:
        parts.append(f'"endTimeUnixNano":"{span.end_time_unix_nano}"')
    if span.attributes:
        parts.append(f'"attributes":{_attributes_json(span.attributes)}')
    if span.dropped_attributes_count:
        parts.append(f'"droppedAttributesCount":{span.dropped_attributes_count}')
    if span.events:
        parts.append(f'"events":{_dumps([_event(event) for event in span.events])}')
    if span.dropped_events_count:
        parts.append(f'"droppedEventsCount":{span.dropped_events_count}')
    if span.links:
        parts.append(f'"links":{_dumps([_link(link) for link in span.links])}')
    if span.dropped_links_count:
        parts.append(f'"droppedLinksCount":{span.dropped_links_count}')
    if span.HasField("status"):
        status = span.status
        described: dict[str, Any] = {}
        if status.message:
            described["message"] = status.message
        if status.code:
            described["code"] = status.code
        parts.append(f'"status":{_dumps(described)}')
    if span.flags:
        parts.append(f'"flags":{span.flags}')
    return parts


def request_to_json_lines(request: bytes) -> list[str]:
    """Decode an ``ExportTraceServiceRequest`` into OTLP/JSON lines, one per span.

    Run on the export thread, which shares the GIL with the request threads: every
    ``_SPANS_PER_TURN`` spans it offers the GIL to them (``time.sleep(0)``) rather than making
    a request wait for the interpreter's switch interval (5 ms) at each turn."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    message = ExportTraceServiceRequest.FromString(request)
    lines = []
    done = 0
    for rs in message.resource_spans:
        resource = _dumps(MessageToDict(rs.resource))
        for ss in rs.scope_spans:
            # The resource and scope, the same on every line of the group, encoded once.
            tail = f'"resource":{resource},"scope":{_dumps(MessageToDict(ss.scope))}}}'
            for span in ss.spans:
                parts = _span_json(span)
                parts.append(tail)
                lines.append("{" + ",".join(parts))
                done += 1
                if done % _SPANS_PER_TURN == 0:
                    time.sleep(0)
    return lines


def unwritable(path: str) -> str | None:
    """Why the traces file ``path`` cannot be written, or None if it looks writable: the file
    is not writable, or the nearest directory on its way that exists (the sink makes the
    others) is not a writable directory."""
    path = os.path.abspath(path)
    if os.path.exists(path):  # through a link (/dev/stdout): its target is what is written
        if os.access(path, os.W_OK):
            return None
        return f"{path}: {_refusal(path)}"
    directory = os.path.dirname(path)
    while not os.path.exists(directory):
        directory = os.path.dirname(directory)
    if not os.path.isdir(directory):
        return f"{directory}: {os.strerror(errno.ENOTDIR)}"
    # access() says no even to root on a read-only file system (readOnlyRootFilesystem).
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory}: {_refusal(directory)}"
    return None


def _refusal(path: str) -> str:
    """Why ``access()`` refused to write ``path``: the two need different fixes."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (not POSIX)
        read_only = False
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def warn_if_unwritable(path: str) -> None:
    """Warn once, when the exporter is made, that the traces file cannot be written -- the
    default ``obskit-traces.jsonl`` in the working directory of a container with a read-only
    root file system, or of a non-root user in ``/`` -- rather than only at the first export,
    a second or more after start. Never raises."""
    try:
        why = unwritable(path)
        if why is None:
            return
        full = os.path.abspath(path)
    except Exception:  # a check that cannot be made: the first export says what went wrong
        return
    _selfmetrics.warn_once(
        f"traces_file_unwritable:{full}",
        "obskit: the traces file %s cannot be written (%s); its spans will be dropped (counted "
        "in obskit_spans_dropped_total). Set OBSKIT_TRACES_FILE to a writable path (such as "
        "/tmp/obskit-traces.jsonl), an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT), or "
        "OTEL_TRACES_EXPORTER=none",
        full,
        why,
    )


class JsonLinesSpanSink:
    """Append spans to ``path`` as JSON lines; rotate to ``path.1`` past ``max_bytes``."""

    name = "jsonl"

    def __init__(self, path: str, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        #: Why the latest export failed (None after one that succeeded), for the warning about it.
        self.failure: str | None = None

    def _failed(self, why: object) -> bool:
        # The absolute path: a relative one (the default) says nothing of the directory the
        # process ran in.
        self.failure = f"{os.path.abspath(self.path)}: {why}"
        return False

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
            deadline = time.monotonic() + timeout
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                for _ in range(_REOPENS):
                    written = self._write(data, deadline)
                    if written is not None:
                        if written:
                            self.failure = None
                        return written
            return self._failed(f"rotated by another process {_REOPENS} times in a row")
        except (OSError, ValueError, DecodeError) as exc:  # DecodeError: bytes protobuf refuses
            # Named in the pipeline's one warning: a read-only directory, a full disk and a
            # permission problem call for different fixes.
            return self._failed(getattr(exc, "strerror", None) or exc)

    def _write(self, data: bytes, deadline: float) -> bool | None:
        """One try at appending ``data``: True when written, False when it could not be, None
        when the file was rotated -- by another process between opening and locking it, or
        here, now -- or replaced: try again on what the path names now."""
        try:
            info: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISREG(info.st_mode):
            # Only a regular file is rotated: a directory, a device (/dev/stdout) or a link
            # someone put there is not obskit's to move (nor to lock or cut back).
            with open(self.path, "ab") as fh:
                fh.write(data)
            return True
        flags = os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        readable = True  # to look at the file's last byte
        try:
            fd = os.open(self.path, flags | os.O_RDWR, 0o666)
        except PermissionError:  # a file obskit may append to but not read
            fd = os.open(self.path, flags | os.O_WRONLY, 0o666)
            readable = False
        try:
            if not self._lock_file(fd, deadline):
                return self._failed("locked by another process for the whole export timeout")
            here = os.fstat(fd)
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                return None
            if (now.st_dev, now.st_ino) != (here.st_dev, here.st_ino):
                return None  # another process rotated it after it was opened here
            size = here.st_size
            if size > 0 and size + len(data) > self.max_bytes:
                os.replace(self.path, self.path + ".1")
                return None  # the next try opens (creates) the new file, and locks it
            if size > 0 and readable and os.pread(fd, 1, size - 1) != b"\n":
                # A line torn by a writer that died mid-write (or whose cut-back failed): this
                # batch starts on a line of its own.
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                # Disk full half-way through: no torn line is left behind (the lock keeps every
                # other obskit writer from appending meanwhile).
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                return self._failed(exc.strerror or exc)
            return True
        finally:
            os.close(fd)  # and the lock with it

    @staticmethod
    def _lock_file(fd: int, deadline: float) -> bool:
        """Lock the whole file (POSIX record lock) before ``deadline``: polled, so that a writer
        stuck while holding it (a stopped process) cannot hold the export thread past its
        timeout. Threads of this process are kept apart by the sink's own lock."""
        if fcntl is None:
            return True
        pause = 0.0005
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    return True  # a file system without locks: as without other processes
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.01)

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
