"""``obskit traces``: render the spans of a JSON-lines traces file as waterfalls in the terminal.

The file holds one OTLP/JSON span per line (see :mod:`obskit.exporters.jsonl`); ``FILE.1``, the
rotated file, holds older spans and is read first when present. Lines that cannot be read are
skipped and counted, never fatal: the file may be truncated mid-line while a process writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from obskit.cli._output import escape_controls, safe_output

__all__ = ["Span", "Trace", "load_spans", "run"]

KIND_NAMES = {0: "UNSPEC", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_OK = 1
STATUS_ERROR = 2
_LABEL_MAX = 56  # widest tree + name column before names are truncated
_DETAIL_MAX = 80  # widest error detail
#: Longest line read as a span; a longer one (a file of NULs left by a crash) is skipped as
#: malformed without being held whole. obskit's own span lines are far shorter: its attribute
#: values are cut at the span limits.
MAX_LINE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Span:
    """The fields of one span line that the waterfall needs."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int
    start: int
    end: int
    service: str
    status_code: int = 0
    error_detail: str = ""
    exception: bool = False

    @property
    def duration(self) -> int:
        """Duration in nanoseconds (0 when the end precedes the start)."""
        return max(0, self.end - self.start)

    @property
    def is_error(self) -> bool:
        """Status ERROR or an exception event."""
        return self.status_code == STATUS_ERROR or self.exception


@dataclass
class Trace:
    """The spans of one trace id found in the file."""

    trace_id: str
    spans: list[Span] = field(default_factory=list)

    @property
    def start(self) -> int:
        """Earliest span start (ns since the epoch)."""
        return min(s.start for s in self.spans)

    @property
    def end(self) -> int:
        """Latest span end (ns since the epoch)."""
        return max(max(s.end, s.start) for s in self.spans)


@dataclass
class LoadResult:
    """Spans read from the files, and where lines were skipped."""

    spans: list[Span] = field(default_factory=list)
    malformed: int = 0
    first_malformed: str = ""


# -- reading ------------------------------------------------------------------------------------


def _any_value(value: object) -> object:
    """The Python value of an OTLP/JSON ``AnyValue``."""
    if not isinstance(value, dict):
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        number = value["intValue"]
        # OTLP/JSON writes an int64 as a string or a JSON integer; anything else (1e400, which
        # json reads as inf and int() refuses with OverflowError) is a malformed value.
        if isinstance(number, bool) or not isinstance(number, (int, str)):
            raise TypeError(f"intValue is not an integer: {number!r}")
        return int(number)
    if "doubleValue" in value:
        return value["doubleValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "arrayValue" in value:
        values = value["arrayValue"].get("values", []) if value["arrayValue"] else []
        return [_any_value(v) for v in values]
    return None


def _attributes(items: object) -> dict[str, object]:
    """An OTLP/JSON ``KeyValue`` list as a dict; malformed entries are ignored."""
    result: dict[str, object] = {}
    if not isinstance(items, list):
        return result
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            try:
                result[item["key"]] = _any_value(item.get("value"))
            except (TypeError, ValueError, AttributeError, ArithmeticError):
                continue
    return result


def _exception_detail(events: object) -> str | None:
    """``Type: message`` of the first exception event, or None without one."""
    if not isinstance(events, list):
        return None
    for event in events:
        if isinstance(event, dict) and event.get("name") == "exception":
            attrs = _attributes(event.get("attributes"))
            kind = str(attrs.get("exception.type") or "exception")
            message = attrs.get("exception.message")
            return f"{kind}: {message}" if message else kind
    return None


def _service(doc: dict[str, Any]) -> str:
    resource = doc.get("resource")
    attrs = _attributes(resource.get("attributes")) if isinstance(resource, dict) else {}
    service = attrs.get("service.name")
    return service if isinstance(service, str) and service else "unknown_service"


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not an integer: {value!r}")
    number = int(value)
    if not 0 <= number < 1 << 64:  # OTLP times and counts are fixed64
        raise ValueError(f"out of range: {number}")
    return number


_HEX_DIGITS = frozenset("0123456789abcdef")


def _hex_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("missing id")
    text = value.lower()
    if len(text) > 64 or not _HEX_DIGITS.issuperset(text):  # printed as it is: hex only
        raise ValueError(f"not a hex id: {value!r}")
    return text


def parse_span(line: str) -> Span | None:
    """The span on one line, or None when the line is not a usable span."""
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            return None
        return _span_from_doc(doc)
    # ArithmeticError: what a number the line holds may raise (OverflowError) is one more way
    # for a line to be unreadable, skipped and counted like the others.
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, ArithmeticError):
        return None


def _status_of(status: object) -> tuple[int, str]:
    """(code, message) of an OTLP/JSON ``Status``; (0, "") when unset or unreadable."""
    if not isinstance(status, dict):
        return 0, ""
    code, message = status.get("code", 0), status.get("message", "")
    return (code if isinstance(code, int) else 0), (message if isinstance(message, str) else "")


def _span_from_doc(doc: dict[str, Any]) -> Span:
    name = doc.get("name", "")
    if not isinstance(name, str):
        raise TypeError("name is not a string")
    parent = doc.get("parentSpanId")
    kind = doc.get("kind", 0)
    code, message = _status_of(doc.get("status"))
    exception = _exception_detail(doc.get("events"))
    return Span(
        trace_id=_hex_id(doc.get("traceId")),
        span_id=_hex_id(doc.get("spanId")),
        parent_id=parent.lower() if isinstance(parent, str) and parent else None,
        name=name or "(unnamed)",
        kind=kind if isinstance(kind, int) else 0,
        start=_int(doc["startTimeUnixNano"]),
        end=_int(doc["endTimeUnixNano"]),
        service=_service(doc),
        status_code=code,
        error_detail=exception or message or "",
        exception=exception is not None,
    )


def _open(path: str) -> Any:
    """``path`` opened for reading in binary. Non-blocking first: opening a FIFO that nobody
    writes to blocks until someone does; opened so, it reads as empty. Blocking again after: a
    pipe with a writer (``obskit traces <(...)``) is read to its end."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _lines(fh: Any) -> Iterator[bytes | None]:
    """The lines of ``fh``; None for a line longer than :data:`MAX_LINE`, read past in chunks."""
    while True:
        line = fh.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) <= MAX_LINE or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the overlong line
            line = fh.readline(MAX_LINE + 1)
        yield None


def _read_into(path: str, result: LoadResult) -> None:
    with _open(path) as fh:
        for number, raw in enumerate(_lines(fh), 1):
            span = None
            if raw is not None:
                line = raw.decode("utf-8", "replace")
                if not line.strip():
                    continue
                span = parse_span(line)
            if span is None:
                result.malformed += 1
                result.first_malformed = result.first_malformed or f"{path}:{number}"
            else:
                result.spans.append(span)


def load_spans(path: str) -> LoadResult:
    """Spans of ``path.1`` (older, when present) then ``path``.

    Raises:
        FileNotFoundError: neither file exists.
        OSError: a file cannot be read.
    """
    paths = [p for p in (path + ".1", path) if os.path.exists(p)]
    if not paths:
        raise FileNotFoundError(path)
    result = LoadResult()
    for p in paths:
        try:
            _read_into(p, result)
        except OSError as exc:
            if not isinstance(exc.filename, str):  # a read's error (a directory) names the fd
                exc.filename = p
            raise
    return result


def group_traces(spans: Iterable[Span]) -> list[Trace]:
    """Spans grouped by trace id (duplicate span ids dropped), ordered by trace start."""
    traces: dict[str, Trace] = {}
    seen: set[tuple[str, str]] = set()
    for span in spans:
        if (span.trace_id, span.span_id) in seen:
            continue
        seen.add((span.trace_id, span.span_id))
        traces.setdefault(span.trace_id, Trace(span.trace_id)).spans.append(span)
    return sorted(traces.values(), key=lambda t: (t.start, t.trace_id))


def select_traces(traces: list[Trace], prefix: str | None, last: int) -> list[Trace]:
    """Traces whose id starts with ``prefix`` (all of them), else the ``last`` most recent
    (every trace when ``last`` <= 0)."""
    wanted = (prefix or "").strip().lower()
    if wanted:  # a blank --trace is no filter: --last applies
        return [t for t in traces if t.trace_id.startswith(wanted)]
    return traces[-last:] if last > 0 else traces


@dataclass(frozen=True)
class Glyphs:
    """Characters used to draw; an ASCII set is used when the output cannot encode Unicode."""

    branch: str = "├─ "
    last: str = "└─ "
    pipe: str = "│  "
    space: str = "   "
    bar: str = "█"
    empty: str = "·"
    error: str = "✗"
    ellipsis: str = "…"


ASCII_GLYPHS = Glyphs("|- ", "`- ", "|  ", "   ", "#", ".", "x", "~")


# -- tree ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One span in tree order: its tree prefix and whether to name its service."""

    span: Span
    prefix: str
    show_service: bool


def _sort_key(span: Span) -> tuple[int, str]:
    return (span.start, span.name)


def _children(spans: list[Span]) -> tuple[list[Span], dict[str, list[Span]]]:
    """Roots (no parent, or a parent missing from the file) and children by parent span id."""
    ids = {s.span_id for s in spans}
    roots: list[Span] = []
    children: dict[str, list[Span]] = {}
    for span in spans:
        if span.parent_id is None or span.parent_id not in ids or span.parent_id == span.span_id:
            roots.append(span)
        else:
            children.setdefault(span.parent_id, []).append(span)
    for kids in children.values():
        kids.sort(key=_sort_key)
    roots.sort(key=_sort_key)
    return roots, children


def tree_rows(spans: list[Span], glyphs: Glyphs) -> list[Row]:
    """Spans depth-first, children under their parent ordered by start.

    Iterative (traces can be deep) and cycle-safe: spans only reachable through a parent cycle
    become roots.
    """
    roots, children = _children(spans)
    rows: list[Row] = []
    visited: set[str] = set()
    for root in roots:
        _walk(root, children, glyphs, visited, rows)
    if len(visited) < len(spans):  # spans in parent cycles: the earliest unvisited first
        for span in sorted(spans, key=_sort_key):
            if span.span_id not in visited:
                _walk(span, children, glyphs, visited, rows)
    return rows


def _walk(
    root: Span, children: dict[str, list[Span]], g: Glyphs, visited: set[str], rows: list[Row]
) -> None:
    # stack of (span, prefix for its own line, prefix for its children, parent service)
    stack: list[tuple[Span, str, str, str | None]] = [(root, "", "", None)]
    while stack:
        span, own, inherited, parent_service = stack.pop()
        if span.span_id in visited:
            continue
        visited.add(span.span_id)
        rows.append(Row(span, own, span.service != parent_service))
        kids = [k for k in children.get(span.span_id, []) if k.span_id not in visited]
        # A label shows at most _LABEL_MAX characters: deeper prefixes keep only their end, so
        # that a chain thousands of spans deep does not make rows of quadratic size.
        inherited = inherited[-_LABEL_MAX:]
        for i in range(len(kids) - 1, -1, -1):
            last = i == len(kids) - 1
            branch = inherited + (g.last if last else g.branch)
            below = inherited + (g.space if last else g.pipe)
            stack.append((kids[i], branch, below, span.service))


# -- rendering ----------------------------------------------------------------------------------


_ANSI = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "bold": "1",
    "dim": "2",
}
_KIND_COLOR = {2: "green", 3: "blue", 4: "magenta", 5: "magenta"}


@dataclass(frozen=True)
class Style:
    """How to draw: glyphs, colors on or off, and the output's encoding."""

    glyphs: Glyphs
    color: bool
    encoding: str | None

    def paint(self, text: str, *colors: str) -> str:
        """``text`` in ``colors`` when color is on."""
        if not self.color or not colors or not text:
            return text
        codes = ";".join(_ANSI[c] for c in colors)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def clean(self, text: str) -> str:
        """File text made safe to print: control characters (escape sequences included) shown
        escaped, characters the output cannot encode replaced."""
        text = escape_controls(text)
        if self.encoding:
            text = text.encode(self.encoding, "replace").decode(self.encoding)
        return text


def make_style(out: TextIO, no_color: bool) -> Style:
    """Pick glyphs the output can encode, and color only for a terminal."""
    encoding = getattr(out, "encoding", None)
    glyphs = Glyphs()
    if encoding:
        try:
            "".join(dataclasses.astuple(glyphs)).encode(encoding)
        except (UnicodeEncodeError, LookupError):
            glyphs = ASCII_GLYPHS
    isatty = getattr(out, "isatty", None)
    tty = bool(isatty()) if callable(isatty) else False
    color = tty and not no_color and not os.environ.get("NO_COLOR")
    return Style(glyphs, color, encoding)


def format_ms(ns: int) -> str:
    """A nanosecond duration in milliseconds, with precision that suits its size."""
    ms = ns / 1e6
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def _truncate(text: str, width: int, ellipsis: str) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + ellipsis


def bar(offset: int, duration: int, total: int, width: int, g: Glyphs) -> str:
    """``width`` columns with the span's interval [offset, offset+duration] of ``total`` filled."""
    if total <= 0:
        first, last = 0, width
    else:
        first = min(width - 1, math.floor(offset / total * width))
        last = max(first + 1, min(width, math.ceil((offset + duration) / total * width)))
    return g.empty * first + g.bar * (last - first) + g.empty * (width - last)


def _label(row: Row, style: Style) -> str:
    service = f"[{row.span.service}] " if row.show_service else ""
    return style.clean(row.prefix + service + row.span.name)


def _status(span: Span, style: Style) -> str:
    if span.is_error:
        detail = _truncate(style.clean(span.error_detail), _DETAIL_MAX, style.glyphs.ellipsis)
        text = f"{style.glyphs.error} ERROR" + (f" {detail}" if detail else "")
        return style.paint(text, "red", "bold")
    return "OK" if span.status_code == STATUS_OK else ""


def _span_line(
    row: Row, bounds: tuple[int, int], label_width: int, width: int, style: Style
) -> str:
    start, end = bounds
    span = row.span
    label = _truncate(_label(row, style), label_width, style.glyphs.ellipsis)
    padded = label.ljust(label_width)
    if span.is_error:
        padded = style.paint(padded, "red")
    elif row.show_service:
        # color the service name only; padding was computed on the plain text
        service = style.clean(f"[{span.service}]")
        padded = padded.replace(service, style.paint(service, "cyan"), 1)
    offset = span.start - start
    cells = [
        padded,
        KIND_NAMES.get(span.kind, f"KIND{span.kind}").ljust(8),
        style.paint(("+" + format_ms(offset)).rjust(12), "dim"),
        format_ms(span.duration).rjust(11),
    ]
    if width > 0:
        color = "red" if span.is_error else _KIND_COLOR.get(span.kind, "yellow")
        drawn = bar(offset, span.duration, end - start, width, style.glyphs)
        cells.append(style.paint(drawn, color))
    status = _status(span, style)
    return "  " + "  ".join(cells) + (f"  {status}" if status else "")


def _header(trace: Trace, rows: list[Row], style: Style) -> str:
    services = list(dict.fromkeys(r.span.service for r in rows))
    errors = sum(1 for s in trace.spans if s.is_error)
    ids = {s.span_id for s in trace.spans}
    orphans = sum(1 for s in trace.spans if s.parent_id and s.parent_id not in ids)
    count = len(trace.spans)
    parts = [
        style.paint(f"trace {trace.trace_id}", "bold"),
        style.paint(style.clean(", ".join(services)), "cyan"),
        format_ms(trace.end - trace.start),
        f"{count} span{'s' if count != 1 else ''}",
    ]
    if errors:
        parts.append(style.paint(f"{errors} error{'s' if errors != 1 else ''}", "red", "bold"))
    if orphans:
        parts.append(f"incomplete: parent of {orphans} span{'s' if orphans != 1 else ''} missing")
    return "  ".join(parts)


def render_trace(trace: Trace, width: int, style: Style) -> Iterator[str]:
    """The header and one line per span of ``trace``."""
    rows = tree_rows(trace.spans, style.glyphs)
    label_width = min(_LABEL_MAX, max(len(_label(r, style)) for r in rows))
    yield _header(trace, rows, style)
    bounds = (trace.start, trace.end)  # each a pass over the spans: once, not per row
    for row in rows:
        yield _span_line(row, bounds, label_width, width, style)


# -- command ------------------------------------------------------------------------------------


def _default_file(out: TextIO) -> str | None:
    from obskit.config import ConfigError, load_config

    try:
        return load_config().traces_file
    except ConfigError as exc:
        print(str(exc), file=out)
        return None


def _missing_message(path: str) -> str:
    return (
        f"obskit: no traces file at {os.path.abspath(path)}\n"
        "Spans are written there when obskit exports to the local file (traces_exporter=jsonl, "
        "the default when no OTLP endpoint is set):\n"
        '  obskit.configure(service_name="my-service")  # then handle a few requests\n'
        "Spans are flushed in batches and at exit (obskit.shutdown()). Pass the file's path, or "
        "set OBSKIT_TRACES_FILE, to read another file."
    )


def _print_malformed(result: LoadResult, out: TextIO) -> None:
    if result.malformed:
        n = result.malformed
        where = f"first at {result.first_malformed}"
        print(f"{n} malformed line{'s' if n != 1 else ''} skipped ({where})", file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``obskit traces [FILE ...] [--trace ID] [--last N] [--width W] [--no-color]``: several
    files (each service's own) are read as one, so a trace that crossed them is drawn whole."""
    out = safe_output(out)
    given = getattr(args, "file", None)
    paths = [given] if isinstance(given, str) else list(given or [])
    if not paths:
        default = _default_file(out)
        if default is None:
            return 2
        paths = [default]
    result = LoadResult()
    for path in paths:
        try:
            part = load_spans(path)
        except FileNotFoundError:
            print(_missing_message(path), file=out)
            return 1
        except OSError as exc:  # the file at fault may be FILE.1, read first
            print(f"obskit: cannot read {exc.filename or path}: {exc.strerror or exc}", file=out)
            return 1
        result.spans += part.spans
        result.malformed += part.malformed
        result.first_malformed = result.first_malformed or part.first_malformed
    status = _show(result, ", ".join(paths), args, out)
    _print_malformed(result, out)
    return status


def _show(result: LoadResult, path: str, args: argparse.Namespace, out: TextIO) -> int:
    if not result.spans:
        print(f"no spans in {path} yet", file=out)
        return 0
    prefix: str | None = getattr(args, "trace", None)
    traces = select_traces(group_traces(result.spans), prefix, getattr(args, "last", 10))
    if not traces:
        print(f"no trace with an id starting with {prefix!r} in {path}", file=out)
        return 1
    style = make_style(out, bool(getattr(args, "no_color", False)))
    width = int(getattr(args, "width", 40))
    for i, trace in enumerate(traces):
        if i:
            print(file=out)
        for line in render_trace(trace, width, style):
            print(line, file=out)
    return 0
