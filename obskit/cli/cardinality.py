"""``obskit cardinality URL``: each metric's series count against its limit, from ``/metrics``.

The guard lives inside the running service, so the report reads what the service exposes: the
``obskit_cardinality_series`` and ``obskit_cardinality_limit`` self-metrics, the overflow
counter, and the number of series of every metric family on the page (obskit's or not).
"""

from __future__ import annotations

import argparse
import http.client
import math
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from typing import Any, TextIO

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from obskit.cli._output import safe_output

__all__ = ["run"]


def _count(value: float) -> str:
    """A sample as a whole number; NaN and infinities as the exposition writes them."""
    return str(int(value)) if math.isfinite(value) else repr(value)


# A scrape of a service at its 1,000-series-per-metric limits is a few MB; a page past this is
# not one service's metrics (or never ends), and reading it whole would hold the memory.
_MAX_PAGE = 64 * 1024 * 1024


class _PageError(ValueError):
    """The page could not be read whole."""


def _fetch(url: str, timeout: float) -> tuple[str, str]:
    """The page at ``url`` and its media type, read within ``timeout`` seconds in all: urlopen's
    own timeout bounds each socket operation only, so a URL that keeps streaming would hold the
    command. A gzip answer (a proxy's) is inflated, within the same size cap."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
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
            add(inflate.decompress(data, _MAX_PAGE + 1 - len(page)))
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
    if urllib.parse.urlsplit(args.url).scheme.lower() not in ("http", "https"):
        out.write(f"obskit cardinality: {args.url} is not an http:// or https:// URL\n")
        return 2
    try:
        text, media_type = _fetch(args.url, args.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        out.write(f"cannot read {args.url}: {exc or type(exc).__name__}\n")
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
    except ValueError as exc:  # not a metrics page (an HTML error page, a login form)
        out.write(f"{args.url} is not a Prometheus metrics page: {exc}\n")
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
        out.write(
            f"{metric:48} {_count(guarded[metric]):>8} {_count(limit):>8} {use:>6} "
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
            out.write(f"  {name:46} {count:>8}\n")
    return 0
