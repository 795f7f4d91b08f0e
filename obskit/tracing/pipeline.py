"""The span pipeline: encode at span end, queue bytes, export in batches from one thread.

The OpenTelemetry SDK's ``BatchSpanProcessor`` keeps up to 2048 finished ``ReadableSpan`` object
graphs in its queue. They outlive the request that made them, get promoted to older GC
generations and make the cyclic collector run full collections that pause the process for tens of
milliseconds -- that is where the usual stack's p99 comes from (issue #11). Here a finished span is
encoded to OTLP protobuf bytes on the request thread (a few microseconds) and only that ``bytes``
object -- invisible to the cyclic GC -- waits in the queue. Everything else the foundation asks for
stays: batching, a bound on spans *and* bytes, drop counting, request threads that never wait on
export, and a shutdown that never blocks longer than its timeout.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from obskit import _selfmetrics
from obskit._resource import for_this_process
from obskit.config import bounded_wait
from obskit.tracing._encode import encode_request, encode_scope, frame_span

__all__ = ["CompactSpanProcessor", "SpanSink"]


class _Event:
    __slots__ = ("attributes", "name", "timestamp")

    def __init__(self, name: str, timestamp: int, attributes: dict[str, Any]) -> None:
        self.name = name
        self.timestamp = timestamp
        self.attributes = attributes


class SpanSink(Protocol):
    """Where batches of encoded spans go (OTLP over HTTP or gRPC, a JSON-lines file, memory)."""

    name: str

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Send one ``ExportTraceServiceRequest``; return False on failure. Must not raise."""

    def shutdown(self) -> None:
        """Release resources."""


Keep = Callable[[ReadableSpan], bool]

#: Scope objects remembered by id() (see CompactSpanProcessor._scope_of).
_MAX_SCOPE_OBJECTS = 256


#: Every processor not yet garbage-collected, for the one fork hook below: a hook per processor
#: could never be unregistered, and configure() makes a new processor each time.
_live: weakref.WeakSet[CompactSpanProcessor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for processor in list(_live):
        processor._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: The most span bytes one export request carries: the OpenTelemetry Collector's gRPC receiver
#: refuses messages over 4 MiB by default (``max_recv_msg_size_mib``), and a refused request
#: loses every span in it. A little is left for the resource and scope framing.
MAX_REQUEST_BYTES = 4 * 1024 * 1024 - 64 * 1024


class CompactSpanProcessor(SpanProcessor):
    """A batching span processor whose queue holds encoded bytes, bounded in count and size.

    Args:
        sink: destination of the batches.
        resource_attributes: attributes of the Resource sent with every batch.
        max_queue_size: spans waiting at most; past it new spans are dropped and counted.
        max_queue_bytes: encoded bytes waiting at most.
        max_export_batch_size: spans per export request.
        schedule_delay: seconds between exports when the queue is not full.
        export_timeout: seconds one export may take.
        keep: decides, at the end of a local root span whose trace was not head-sampled,
            whether the trace is exported anyway (errors, slow requests). ``None`` drops such
            traces at once.
        max_spans_per_trace, max_pending_traces, max_pending_bytes: hard bounds on spans buffered
            for not-yet-decided traces.
    """

    def __init__(
        self,
        sink: SpanSink,
        *,
        resource_attributes: dict[str, Any],
        max_queue_size: int = 2048,
        max_queue_bytes: int = 8 * 1024 * 1024,
        max_export_batch_size: int = 512,
        schedule_delay: float = 1.0,
        export_timeout: float = 30.0,
        keep: Keep | None = None,
        max_spans_per_trace: int = 256,
        max_pending_traces: int = 512,
        max_pending_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        from obskit.tracing._encode import encode_resource

        self.sink = sink
        self._resource_attributes = resource_attributes
        self._resource = encode_resource(resource_attributes)
        self._max_queue = max_queue_size
        self._max_bytes = max_queue_bytes
        # A batch never larger than the queue (the export thread is woken when a batch is
        # ready: past the queue's size it never would be, and spans would drop until the
        # timer), and woken by bytes before the queue's bytes run out.
        self._batch = max(1, min(max_export_batch_size, max_queue_size))
        self._wake_bytes = max(1, min(MAX_REQUEST_BYTES, max_queue_bytes // 2))
        self._delay = schedule_delay
        self._export_timeout = export_timeout
        self.keep = keep
        self._max_spans_per_trace = max_spans_per_trace
        self._max_pending_traces = max_pending_traces
        self._max_pending_bytes = max_pending_bytes
        # Encoded instrumentation scopes, one per (name, version). The SDK makes a new scope
        # object on every get_tracer() call, and some code calls it per request: scopes are
        # told apart by value, and only a bounded number of objects is remembered by id() (the
        # one-lookup fast path; the list keeps those ids from being reused).
        self._scope_values: dict[tuple[str, str | None, str | None, str | None], int] = {}
        self._scope_index: dict[int, int] = {}
        self._scope_objects: list[object] = []
        self._scope_bytes: list[bytes] = []
        self._init_state()
        _live.add(self)

    def _init_state(self, closed: bool = False) -> None:
        # Re-entrant: a SIGTERM handler calling obskit.shutdown() runs on the main thread, maybe
        # while that thread is inside one of the sections below (close() must not hang there).
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._flushed = threading.Condition(self._lock)
        # Two parallel lists instead of a list of tuples: appending ints and bytes allocates no
        # object the cyclic GC tracks.
        self._q_scope: list[int] = []
        self._q_data: list[bytes] = []
        self._q_bytes = 0
        # Spans of undecided local traces, by (trace id, local root's span id): two requests of
        # one trace (a retry, two calls from one caller) each keep or drop their own spans.
        self._pending: dict[tuple[int, int], list[bytes]] = {}
        #: The keep decision of recently ended local roots (oldest first, bounded like
        #: _pending), for their spans that end later.
        self._settled: dict[tuple[int, int], bool] = {}
        self._pending_scope: dict[tuple[int, int], list[int]] = {}
        #: The local root of each started, unsampled, not yet ended span (held spans only);
        #: bounded: past it a span is buffered with its trace's first root, as before.
        self._root_of: dict[int, int] = {}
        self._pending_bytes = 0
        self._enqueued = 0  # sequence numbers for force_flush
        self._exported = 0
        self._stopping = False
        #: Set once close() is over: a span that ends later (a request in flight across a
        #: reconfiguration keeps the processor it started on) is counted, not left in a queue
        #: nothing will export.
        self._closed = False
        self._aborted = False
        self._inflight = 0
        if closed:
            # Closed before a fork (obskit.shutdown(), a reconfiguration): it stays closed in the
            # child -- no export thread, and what the child's code still ends is counted.
            self._closed = self._stopping = True
            return
        self._thread = threading.Thread(target=self._run, name="obskit-span-export", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        # A forked worker (gunicorn --preload) inherits no running thread and maybe a held lock.
        closed = self._closed or self._stopping
        self._init_state(closed)
        if closed:
            return
        after_fork = getattr(self.sink, "after_fork", None)
        if after_fork is not None:
            try:
                after_fork()
            except Exception as exc:
                _selfmetrics.internal_error("after_fork", exc)
        fresh = for_this_process(self._resource_attributes)  # the worker is its own process
        if fresh:
            from obskit.tracing._encode import encode_resource

            self._resource_attributes = {**self._resource_attributes, **fresh}
            self._resource = encode_resource(self._resource_attributes)

    # -- request thread ----------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """With a keep policy: note the local root of a span that may be held at its end."""
        if self.keep is None:
            return
        ctx = span.context
        if ctx is None or ctx.trace_flags & 1:
            return
        parent = span.parent
        span_id = ctx.span_id
        roots = self._root_of
        if parent is None or parent.is_remote:
            root = span_id
        else:
            root = roots.get(parent.span_id, parent.span_id)
        if len(roots) < self._max_pending_traces * self._max_spans_per_trace:
            roots[span_id] = root

    def on_end(self, span: ReadableSpan) -> None:
        """Encode the span and queue it; never blocks on export, never raises."""
        ctx = span.context
        if ctx is None:
            return
        sampled = ctx.trace_flags & 1
        if not sampled and self.keep is None:
            return
        try:
            data = frame_span(span)
            scope = self._scope_of(span)
        except Exception as exc:  # pragma: no cover - defensive: a span we cannot encode
            _selfmetrics.internal_error("span_encode", exc)
            return
        if sampled:
            self._enqueue(scope, data)
        else:
            self._hold(span, scope, data)

    def submit(self, span: Any) -> None:
        """Queue a finished span-like object (a ``ServerSpan``) whatever its sampled flag."""
        try:
            data = frame_span(span)
            scope = self._scope_of(span)
        except Exception as exc:
            _selfmetrics.internal_error("span_encode", exc)
            return
        self._enqueue(scope, data)

    def _scope_of(self, span: ReadableSpan) -> int:
        scope = span.instrumentation_scope
        index = self._scope_index.get(id(scope))
        if index is None:
            index = self._scope_by_value(scope)
        return index

    def _scope_by_value(self, scope: Any) -> int:
        name = scope.name if scope is not None else "obskit"
        version = scope.version if scope is not None else None
        schema_url = getattr(scope, "schema_url", None) or None
        attrs = dict(getattr(scope, "attributes", None) or {})
        # Scopes that differ only by schema URL or attributes are different scopes (OTLP).
        key = (
            str(name),
            None if version is None else str(version),
            None if schema_url is None else str(schema_url),
            repr(sorted(attrs.items(), key=repr)) if attrs else None,
        )
        with self._lock:
            index = self._scope_values.get(key)
            if index is None:
                index = len(self._scope_bytes)
                self._scope_bytes.append(encode_scope(key[0], key[1], attrs, key[2]))
                self._scope_values[key] = index
            if len(self._scope_objects) < _MAX_SCOPE_OBJECTS:
                self._scope_objects.append(scope)
                self._scope_index[id(scope)] = index
        return index

    def _enqueue(self, scope: int, data: bytes) -> None:
        size = len(data)
        dropped = None
        with self._lock:
            if self._closed:
                dropped = "shutdown"
            elif size > MAX_REQUEST_BYTES:
                # No request could carry it, and sent with others it would fail them all.
                dropped = "span_too_large"
            elif len(self._q_data) >= self._max_queue or self._q_bytes + size > self._max_bytes:
                dropped = "queue_full"
            else:
                self._q_scope.append(scope)
                self._q_data.append(data)
                self._q_bytes += size
                self._enqueued += 1
                if len(self._q_data) == self._batch or (
                    self._q_bytes >= self._wake_bytes > self._q_bytes - size
                ):
                    self._wake.notify()
        if dropped is not None:
            _selfmetrics.spans_dropped(dropped)

    def _hold(self, span: ReadableSpan, scope: int, data: bytes) -> None:
        """Buffer a span of an undecided (head-dropped) local trace until its local root ends;
        the root itself is never buffered: it decides for its spans and goes with them."""
        ctx = span.context
        span_id = ctx.span_id
        parent = span.parent
        is_local_root = parent is None or parent.is_remote
        root = self._root_of.pop(span_id, None)
        if root is None:  # started before the keep policy, or past the bound of _root_of
            root = span_id if is_local_root else parent.span_id  # type: ignore[union-attr]
        key = (ctx.trace_id, root)
        drop_reason = None
        dropped = 1
        held: list[bytes] = []
        scopes: list[int] = []
        with self._lock:
            if is_local_root:
                held = self._pending.pop(key, [])
                scopes = self._pending_scope.pop(key, [])
                self._pending_bytes -= sum(map(len, held))
                settled = None
            else:
                # A span that ends after its local root (a background task): the trace's fate
                # is known, so no buffer is opened that nothing would ever close.
                settled = self._settled.get(key)
            if settled is None and not is_local_root:
                spans = self._pending.get(key)
                if spans is None:
                    if len(self._pending) >= self._max_pending_traces:
                        # Full: give up the oldest undecided trace (its root may never end)
                        # rather than refuse every new trace from now on.
                        oldest = next(iter(self._pending))
                        evicted = self._pending.pop(oldest)
                        self._pending_scope.pop(oldest, None)
                        self._pending_bytes -= sum(map(len, evicted))
                        drop_reason, dropped = "pending_traces", len(evicted)
                    spans = self._pending[key] = []
                    self._pending_scope[key] = []
                if len(spans) >= self._max_spans_per_trace:
                    drop_reason, dropped = "pending_spans_per_trace", 1
                elif self._pending_bytes + len(data) > self._max_pending_bytes:
                    drop_reason, dropped = "pending_bytes", 1
                else:
                    spans.append(data)
                    self._pending_scope[key].append(scope)
                    self._pending_bytes += len(data)
        if settled is not None:
            if settled:  # kept: the late span follows its trace; dropped: as decided, uncounted
                self._enqueue(scope, data)
            return
        if drop_reason is not None and dropped:
            _selfmetrics.spans_dropped(drop_reason, dropped)
        if not is_local_root:
            return
        keep = self.keep
        try:
            kept = keep is not None and keep(span)
        except Exception as exc:
            _selfmetrics.internal_error("keep_decision", exc)
            kept = False
        with self._lock:
            settled_traces = self._settled
            settled_traces[key] = kept
            if len(settled_traces) > self._max_pending_traces:
                del settled_traces[next(iter(settled_traces))]
        if kept:
            _selfmetrics.traces_kept()
            for s, d in zip(scopes, held, strict=True):
                self._enqueue(s, d)
            self._enqueue(scope, data)

    # -- export thread -----------------------------------------------------------------------

    def _take_batch(self) -> tuple[list[int], list[bytes]]:
        n = min(len(self._q_data), self._batch)
        data = self._q_data[:n]
        size = sum(map(len, data))
        if size > MAX_REQUEST_BYTES:  # large spans: as many as one request may carry
            size = n = 0
            for item in data:
                if n and size + len(item) > MAX_REQUEST_BYTES:
                    break
                size += len(item)
                n += 1
            data = data[:n]
        scopes = self._q_scope[:n]
        del self._q_scope[:n], self._q_data[:n]
        self._q_bytes -= size
        return scopes, data

    def _run(self) -> None:
        while True:
            with self._lock:
                if (
                    not self._stopping
                    and len(self._q_data) < self._batch
                    and self._q_bytes < self._wake_bytes
                ):
                    self._wake.wait(self._delay)
                stopping = self._stopping
                scopes, data = self._take_batch()
            if data:
                self._inflight = len(data)
                self._export(scopes, data)
                self._inflight = 0
                with self._lock:
                    self._exported += len(data)
                    self._flushed.notify_all()
            elif stopping:
                return

    def _export(self, scopes: list[int], data: list[bytes]) -> None:
        grouped: dict[int, list[bytes]] = {}
        if scopes.count(scopes[0]) == len(scopes):  # one scope (the usual case): no loop
            grouped[scopes[0]] = data
        else:
            for s, d in zip(scopes, data, strict=True):
                grouped.setdefault(s, []).append(d)
        try:
            request = encode_request(
                self._resource, ((self._scope_bytes[s], spans) for s, spans in grouped.items())
            )
            ok = self.sink.export(request, len(data), self._export_timeout)
        except Exception as exc:
            _selfmetrics.internal_error("span_export", exc)
            ok = False
        if self._aborted:
            return  # shut down while this export was under way; obskit may be reset already
        try:  # the export thread must outlive anything its bookkeeping meets
            if ok:
                rejected, why = getattr(self.sink, "rejected", None) or (0, "")
                _selfmetrics.spans_exported(self.sink.name, len(data) - rejected)
                if rejected:
                    # The collector's partial_success: accepted the request, refused these.
                    _selfmetrics.spans_dropped("rejected", rejected)
                    _selfmetrics.warn_once(
                        "spans_rejected", "obskit: the collector rejected spans: %s", why or "?"
                    )
            else:
                failure = getattr(self.sink, "failure", None)
                _selfmetrics.export_failed("traces", self.sink.name, len(data), failure)
        except Exception as exc:
            _selfmetrics.internal_error("span_export", exc)

    # -- lifecycle ---------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued so far; False if that did not finish within the timeout."""
        deadline = time.monotonic() + bounded_wait(timeout_millis / 1000.0)
        with self._lock:
            target = self._enqueued
            self._wake.notify()
            while self._exported < target and self._thread.is_alive():
                # Keep the export thread busy until it has drained up to ``target``.
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.notify()
                self._flushed.wait(min(left, 0.05))
            return self._exported >= target

    def shutdown(self) -> None:
        """SpanProcessor API: :meth:`close` with the export timeout."""
        self.close(self._export_timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Flush and stop the export thread, waiting at most ``timeout`` seconds."""
        # Called from a signal handler that interrupted this thread inside a locked section: the
        # export thread cannot take the lock before the handler returns, so waiting for it
        # would only spend the timeout. What is queued is given up (and counted) at once.
        timeout = bounded_wait(timeout)
        reentered: bool = self._lock._is_owned()  # type: ignore[attr-defined]
        with self._lock:
            self._stopping = True
            # An export already under way keeps its own timeout; later ones fit in what is left.
            self._export_timeout = min(self._export_timeout, max(timeout, 0.001))
            self._wake.notify()
        if not reentered:
            self._thread.join(timeout)
        finished = not reentered and not self._thread.is_alive()
        if not finished:
            # The collector hangs: abandon what is left. Closing the sink interrupts the export
            # under way, and the thread stops touching the self-metrics (obskit may be reset).
            with self._lock:
                self._aborted = True
                dropped = len(self._q_data) + self._inflight
                self._q_scope.clear()
                self._q_data.clear()
                self._q_bytes = 0
            if dropped:
                _selfmetrics.spans_dropped("shutdown_timeout", dropped)
        with self._lock:
            self._closed = True
            late = len(self._q_data)  # ended after the export thread's last batch
            self._q_scope.clear()
            self._q_data.clear()
            self._q_bytes = 0
        if late:
            _selfmetrics.spans_dropped("shutdown", late)
        try:
            self.sink.shutdown()
        except Exception as exc:
            _selfmetrics.internal_error("sink_shutdown", exc)
        return finished

    def queued(self) -> int:
        """Spans waiting for export."""
        return len(self._q_data)
