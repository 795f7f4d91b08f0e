"""``obskit cardinality URL``: each metric's series count against its limit, from ``/metrics``.

The guard lives inside the running service, so the report reads what the service exposes: the
``obskit_cardinality_series`` and ``obskit_cardinality_limit`` self-metrics, the overflow
counter, and the number of series of every metric family on the page (obskit's or not).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import math
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from typing import IO, Any, TextIO

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from obskit.cli._output import escape_controls, safe_output
from obskit.config import bounded_wait, masked_url

__all__ = ["run"]


def _count(value: float) -> str:
    """A sample as a whole number; NaN and infinities as the exposition writes them."""
    return str(int(value)) if math.isfinite(value) else repr(value)


# A scrape of a service at its 1,000-series-per-metric limits is a few MB; a page past this is
# not one service's metrics (or never ends), and reading it whole would hold the memory.
_MAX_PAGE = 64 * 1024 * 1024


class _PageError(ValueError):
    """The page could not be read whole."""


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, the URL's credentials sent on to the same origin only: they are an
    unredirected header (urllib would copy an ordinary one to wherever a redirect points, another
    host included); curl and requests keep them to the origin too."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(new.full_url) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _request(url: str) -> urllib.request.Request:
    """A GET of ``url``; its user info, if any, sent as HTTP Basic credentials (RFC 7617) -- a
    /metrics behind basic auth is common, and urllib would otherwise look ``user:pw@host`` up
    as a host name."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=host)) if at else url,
        headers={"Accept-Encoding": "gzip"},
    )
    if at:
        user, _, password = (urllib.parse.unquote(p) for p in userinfo.partition(":"))
        token = base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogateescape"))
        request.add_unredirected_header("Authorization", f"Basic {token.decode('ascii')}")
    return request


def _fetch_within(url: str, timeout: float) -> tuple[str, str]:
    """:func:`_fetch` bounded as a whole by ``timeout`` (+ 0.25 s): urlopen's timeout bounds
    each socket operation only, so headers trickled a byte at a time, a slow name lookup or a
    chain of slow redirects would each hold the command far past it. The fetch runs in a daemon
    thread, left behind at the deadline (the command ends soon after; _read's deadline ends
    the read)."""
    box: list[tuple[str, str] | Exception] = []

    def fetch() -> None:
        try:
            box.append(_fetch(url, timeout))
        except Exception as exc:  # handed to the caller, which reports it
            box.append(exc)

    thread = threading.Thread(target=fetch, name="obskit-cardinality-fetch", daemon=True)
    thread.start()
    # A moment's slack, as doctor's checks have: a socket timed out at the deadline, or _read
    # stopping there, reports its own more precise reason.
    thread.join(bounded_wait(timeout) + 0.25)
    if not box:
        raise TimeoutError(f"page not read within {timeout:g} s")  # as _read says it
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _fetch(url: str, timeout: float) -> tuple[str, str]:
    """The page at ``url`` and its media type, its body read within ``timeout`` seconds (a URL
    that keeps streaming would hold the worker thread). A gzip answer (a proxy's) is inflated,
    within the same size cap."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_Redirects)
    with opener.open(_request(url), timeout=timeout) as response:
        coding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        if coding not in ("identity", "gzip", "x-gzip"):
            raise _PageError(f"answer in an encoding this command cannot read: {coding}")
        # wbits 47: a gzip (or zlib) stream, its output bounded by max_length below.
        inflate = zlib.decompressobj(wbits=47) if coding != "identity" else None
        page = _read(response, inflate, deadline, timeout)
        media_type = response.headers.get_content_type()
    return page.decode("utf-8", "replace"), media_type


def _read(response: Any, inflate: Any, deadline: float, timeout: float) -> bytes:
    page = bytearray()

    def add(data: bytes) -> None:
        page.extend(data)
        if len(page) > _MAX_PAGE:
            raise _PageError(f"page larger than {_MAX_PAGE // (1024 * 1024)} MiB")

    while True:
        # read1: what has arrived, so the deadline is checked while a slow page trickles in
        data = response.read1(65536)
        if not data:
            break
        if inflate is None:
            add(data)
        while inflate is not None and data:
            # At most one byte past the cap is inflated: a gzip bomb stops there.
            try:
                add(inflate.decompress(data, _MAX_PAGE + 1 - len(page)))
            except zlib.error as exc:  # not gzip after all: zlib.error is no ValueError
                raise _PageError(f"compressed page unreadable: {exc}") from None
            if inflate.eof:  # a gzip member ended; another may follow it
                data = inflate.unused_data
                if data:
                    inflate = zlib.decompressobj(wbits=47)
            else:
                data = inflate.unconsumed_tail
        if time.monotonic() > deadline:
            raise TimeoutError(f"page not read within {timeout:g} s")
    if getattr(response, "length", None):  # http.client's read1 gives b"" when the peer closed
        raise _PageError(f"page cut short: {response.length} of its bytes never came")
    if inflate is not None and not inflate.eof:
        raise _PageError("compressed page cut short")
    return bytes(page)


def _created_of(name: str, families: Iterable[str]) -> bool:
    """Whether ``name`` is the ``_created`` family the text format writes beside a counter,
    histogram or summary on the page (part of that metric, not one of its own)."""
    return name.endswith("_created") and name[: -len("_created")] in families


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the cardinality report; 1 if the page cannot be read, 2 for a URL that is not
    http(s), 0 otherwise."""
    out = safe_output(out)
    url = args.url.strip()
    # What is printed of the URL: its password and query values (a token) masked, as doctor
    # shows a collector URL, and its control characters escaped.
    shown = escape_controls(masked_url(url))
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        out.write(f"obskit cardinality: {shown} is not an http:// or https:// URL\n")
        return 2
    if any(c <= " " or c == "\x7f" for c in url):
        # Refused here, not by http.client: its message would quote the URL, query included.
        out.write(
            f"obskit cardinality: {shown} is not a valid URL (a space or control character)\n"
        )
        return 2
    try:
        text, media_type = _fetch_within(url, args.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # The peer's text (an HTTP reason phrase) is escaped like the page's.
        out.write(f"cannot read {shown}: {escape_controls(str(exc) or type(exc).__name__)}\n")
        return 1
    parse = (
        openmetrics_families
        if media_type == "application/openmetrics-text"
        else text_string_to_metric_families
    )
    keys: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    limits: dict[str, float] = {}
    guarded: dict[str, float] = {}
    overflow: dict[str, float] = {}
    try:
        for family in parse(text):
            # Added to, not set: the text parser gives an untyped metric (no # TYPE line) one
            # family per sample, all of the same name.
            keys.setdefault(family.name, set()).update(
                (s.name, tuple(sorted(s.labels.items()))) for s in family.samples
            )
            for sample in family.samples:
                metric = sample.labels.get("metric")
                if metric is None:
                    continue
                if sample.name == "obskit_cardinality_limit":
                    limits[metric] = sample.value
                elif sample.name == "obskit_cardinality_series":
                    guarded[metric] = sample.value
                elif sample.name == "obskit_cardinality_overflow_total":
                    overflow[metric] = sample.value
    except Exception as exc:
        # Not a metrics page (an HTML error page, a login form) -- whatever the parsers raise:
        # ValueError mostly, but the OpenMetrics one raises KeyError on some malformed pages.
        detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        out.write(f"{shown} is not a Prometheus metrics page: {escape_controls(detail)}\n")
        return 1
    out.write(f"{'metric':48} {'series':>8} {'limit':>8} {'use':>6} {'folded':>8}\n")

    def share(metric: str) -> float:
        limit = limits.get(metric, 0.0)
        ratio = guarded[metric] / limit if limit and math.isfinite(limit) else 0.0
        return ratio if math.isfinite(ratio) else 0.0

    for metric in sorted(guarded, key=lambda m: -share(m)):
        limit = limits.get(metric, 0.0)
        use = f"{share(metric):.0%}" if limit and math.isfinite(limit) else "-"
        folded = overflow.get(metric, 0.0)
        flag = "  <- over limit, folding" if folded else ""
        name = escape_controls(metric)  # a label value of the page: it may hold escapes
        out.write(
            f"{name:48} {_count(guarded[metric]):>8} {_count(limit):>8} {use:>6} "
            f"{_count(folded):>8}{flag}\n"
        )
    series = {name: len(found) for name, found in keys.items()}
    others = {
        name: count
        for name, count in series.items()
        if name not in guarded and not name.startswith("obskit_") and not _created_of(name, series)
    }
    if others:
        out.write("\nunguarded families on the page (series incl. buckets):\n")
        for name, count in sorted(others.items(), key=lambda kv: -kv[1])[: args.top]:
            out.write(f"  {escape_controls(name):46} {count:>8}\n")
    return 0
