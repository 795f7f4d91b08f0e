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

import errno
import json
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

__all__ = ["JsonLinesSpanSink", "request_to_json_lines"]

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
#: How many times a batch is retried on a file that another process rotated between this one's
#: open and lock: once in practice.
_REOPENS = 8


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
            deadline = time.monotonic() + timeout
            with self._lock:
                directory = os.path.dirname(self.path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                for _ in range(_REOPENS):
                    written = self._write(data, deadline)
                    if written is not None:
                        return written
            return False  # rotated away under this writer again and again
        except (OSError, ValueError, DecodeError):  # DecodeError: bytes protobuf refuses
            return False

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
                return False
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
            except OSError:
                # Disk full half-way through: no torn line is left behind (the lock keeps every
                # other obskit writer from appending meanwhile).
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                return False
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
