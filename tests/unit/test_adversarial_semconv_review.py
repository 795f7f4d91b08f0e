"""Findings of a read-through review of the HTTP semantic conventions (2026-11-25), each pinned by
a test.

The rules are the stable HTTP server span conventions (``docs/http/http-spans.md`` of
open-telemetry/semantic-conventions): ``url.query`` is Conditionally Required when a query was
received, its presigned-URL values redacted; ``server.address`` and ``server.port`` are the host
the client asked for (``Host``, ``:authority``), not the listening socket; an instrumentation
that may turn valid methods into ``_OTHER`` must take ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``.

Frameworks are driven through their own test clients (``tests/frameworks/contract_apps.py``);
the WSGI and ASGI middlewares are also called directly where a server's exact input matters.
Spans are captured with ``obskit.testing.capture()`` (the real span pipeline, encoded to OTLP
bytes and decoded back).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:  # alone; under tests/frameworks its conftest did the same
    from tests.frameworks.django_app import settings as _project

    settings.configure(**{k: getattr(_project, k) for k in dir(_project) if k.isupper()})
    django.setup()

import obskit
from obskit.asgi import ObskitMiddleware as AsgiMiddleware
from obskit.config import ConfigError, load_config
from obskit.http import _semconv as sc
from obskit.testing import Capture, capture
from obskit.tracing import outbound
from obskit.wsgi import ObskitMiddleware as WsgiMiddleware
from tests.frameworks.contract_apps import WEBS, Web
from tests.frameworks.helpers import all_requests_total
from tests.otlp_receiver import attributes as attrs
from tests.wsgi_environ import environ

#: A query with the values the conventions redact (``sig``, ``Signature``) and others kept.
SIGNED = "q=shoes&sig=abc123&Signature=xyz789&page=2"
SIGNED_REDACTED = "q=shoes&sig=REDACTED&Signature=REDACTED&page=2"


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured like settings.OBSKIT (what Django's middleware configures), capturing."""
    with capture(**settings.OBSKIT) as captured:
        yield captured


@pytest.fixture(params=sorted(WEBS))
def web(request: pytest.FixtureRequest, cap: Capture) -> Iterator[Web]:
    """Flask, Django and FastAPI, each through its own test client."""
    with WEBS[request.param].serving() as served:
        yield served


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def wsgi_span(cap: Capture, **extra: Any) -> dict[str, Any]:
    """The SERVER span attributes of one request to obskit's WSGI middleware, environ ``extra``."""
    app = WsgiMiddleware(wsgi_app)
    body = app(environ("/items/7", **extra), lambda status, headers, exc_info=None: None)
    assert [b"ok"] == list(body)
    (span,) = cap.spans()
    return attrs(span)


def asgi_span(cap: Capture, **extra: Any) -> dict[str, Any]:
    """The SERVER span attributes of one request to obskit's ASGI middleware, scope ``extra``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/7",
        "raw_path": b"/items/7",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        **extra,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    asyncio.run(AsgiMiddleware(app)(scope, receive, send))
    (span,) = cap.spans()
    return attrs(span)


# -- 6. url.query ------------------------------------------------------------------------------


# A bug this test found, since fixed: SERVER spans never carried `url.query`, which the
# conventions make Conditionally Required when a query was received (FastAPI's own span for the
# same request had it); it now does, in every adapter, with presigned-URL values redacted.
def test_server_span_carries_url_query_with_signed_values_redacted(web: Web, cap: Capture) -> None:
    assert 200 == web.get(f"/items/7?{SIGNED}").status
    (span,) = cap.spans()
    recorded = attrs(span)
    assert SIGNED_REDACTED == recorded["url.query"]
    assert "/items/7" == recorded["url.path"]
    assert [] == [key for key, value in recorded.items() if "abc123" in str(value)]


# A bug this test found, since fixed: (the same finding) the query is recorded "if and only if
# one was received": a request without one has no `url.query` at all, not an empty one.
def test_url_query_is_absent_without_a_query(web: Web, cap: Capture) -> None:
    assert 200 == web.get("/items/7?q=1").status
    assert 200 == web.get("/items/7").status
    with_query, without = (attrs(span) for span in cap.spans())
    assert "q=1" == with_query["url.query"]
    assert "url.query" not in without


# A bug this test found, since fixed: (the same finding) the query comes from each server's own
# field -- WSGI's QUERY_STRING (latin-1 text), ASGI's scope["query_string"] (bytes) --, taken as
# received (percent-encoding kept) and redacted by key, not by value.
@pytest.mark.parametrize(
    ("query", "recorded"),
    [
        ("a=%2F&b=c", "a=%2F&b=c"),
        (
            "AWSAccessKeyId=AKIA&X-Goog-Signature=s&sig=",
            "AWSAccessKeyId=REDACTED&X-Goog-Signature=REDACTED&sig=REDACTED",
        ),
        ("sigx=1&xsig=2&sig", "sigx=1&xsig=2&sig"),  # other keys, and a key without a value
        ("q=caf\u00c3\u00a9", "q=caf\u00c3\u00a9"),  # UTF-8 bytes as latin-1 text, unchanged
    ],
    ids=["encoded", "every-secret-key", "look-alikes", "raw-bytes"],
)
def test_url_query_from_wsgi_and_asgi_alike(cap: Capture, query: str, recorded: str) -> None:
    assert recorded == wsgi_span(cap, QUERY_STRING=query)["url.query"]
    cap.clear()
    assert recorded == asgi_span(cap, query_string=query.encode("latin-1"))["url.query"]


# A bug this test found, since fixed: (the same finding) a head-dropped request kept by the tail
# policy (a 500) is rebuilt from the same facts: its span carries the redacted query too.
def test_a_kept_unsampled_request_carries_url_query() -> None:
    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [])
        return [b"no"]

    with capture(sampler="always_off", keep_errors=True) as cap:
        app = WsgiMiddleware(failing)
        list(app(environ("/pay", QUERY_STRING=SIGNED), lambda *args: None))
        (span,) = cap.spans()
    assert SIGNED_REDACTED == attrs(span)["url.query"]


# A bug this test found, since fixed: (the same finding) the redaction rule lived in the outbound
# code alone; SERVER and CLIENT spans now share one list of keys and one rule.
def test_one_query_redaction_rule_for_server_and_client_spans() -> None:
    # The conventions' keys, and those a security review added (SigV4, OAuth, API keys).
    assert {"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"} < sc.SECRET_QUERY_KEYS
    assert not hasattr(outbound, "_SECRET_QUERY_KEYS")
    url = f"https://bucket.example/key?{SIGNED}"
    full, scrub = outbound._full_url(urllib.parse.urlsplit(url))
    assert f"https://bucket.example/key?{sc.redact_query(SIGNED)}" == full
    assert scrub is not None
    assert SIGNED_REDACTED == sc.redact_query(SIGNED)
    assert "q=1&sig" == sc.redact_query("q=1&sig")


# -- 7. server.address / server.port -------------------------------------------------------------


# A bug this test found, since fixed: `server.address`/`server.port` were the listening socket's
# (ASGI scope["server"]; "testserver" under Django's test client whatever the client asked for);
# the conventions say the Host header's (HTTP/2's :authority). Forwarded headers stay untrusted.
def test_server_address_and_port_come_from_the_host_header(web: Web, cap: Capture) -> None:
    headers = {
        "Host": "shop.example.com:8443",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "host=evil.example;proto=https",
    }
    assert 200 == web.get("/items/7", headers=headers).status
    (span,) = cap.spans()
    recorded = attrs(span)
    assert ("shop.example.com", 8443) == (recorded["server.address"], recorded["server.port"])


# A bug this test found, since fixed: (the same finding) the Host header parsed as the URL
# authority it is: an IPv6 literal without its brackets, a missing port the scheme's, a bad port
# dropped (the host kept); a value that names no host leaves the socket's address. Never raises
# (internal errors raise in the tests): the request is still counted.
@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("shop.example.com:8443", "http", ("shop.example.com", 8443)),
        ("shop.example.com", "http", ("shop.example.com", 80)),
        ("shop.example.com", "https", ("shop.example.com", 443)),
        ("[::1]:8080", "http", ("::1", 8080)),
        ("[2001:db8::1]", "https", ("2001:db8::1", 443)),
        ("[::1]:", "http", ("::1", 80)),
        ("shop.example.com:abc", "http", ("shop.example.com", None)),
        ("shop.example.com:99999", "http", ("shop.example.com", None)),
        ("shop.example.com:0", "http", ("shop.example.com", None)),
        ("shop.example.com:8\u00b2", "http", ("shop.example.com", None)),  # "²": isdigit(), no int
        ("::1", "http", ("::1", 80)),  # an IPv6 address without its brackets
        ("[::1", "http", ("127.0.0.1", 8000)),
        ("shop.example.com:80:90", "http", ("127.0.0.1", 8000)),
        ("[::1]x", "http", ("127.0.0.1", 8000)),
        (":8080", "http", ("127.0.0.1", 8000)),
        ("a b", "http", ("127.0.0.1", 8000)),
        ("a.example,b.example", "http", ("127.0.0.1", 8000)),  # two Host headers, joined
        ("x" * 400, "http", ("127.0.0.1", 8000)),
        ("", "http", ("127.0.0.1", 8000)),
    ],
)
def test_host_header_parsing(
    cap: Capture, host: str, scheme: str, expected: tuple[str, int | None]
) -> None:
    recorded = wsgi_span(cap, HTTP_HOST=host, **{"wsgi.url_scheme": scheme})
    assert expected == (recorded.get("server.address"), recorded.get("server.port"))
    assert 1.0 == sum(all_requests_total().values())
    cap.clear()
    headers = [(b"host", host.encode("latin-1"))] if host else []
    recorded = asgi_span(cap, headers=headers, scheme=scheme)
    assert expected == (recorded.get("server.address"), recorded.get("server.port"))


# A bug this test found, since fixed: (the same finding) the socket's address named the server
# even when the client named it; now only a request without a Host header (HTTP/1.0) gets it.
def test_the_socket_names_the_server_only_without_a_host_header(cap: Capture) -> None:
    socket = ("10.0.0.5", 9000)
    named = asgi_span(cap, server=socket, headers=[(b"host", b"api.example:8080")])
    cap.clear()
    anonymous = asgi_span(cap, server=socket)
    assert ("api.example", 8080) == (named["server.address"], named["server.port"])
    assert socket == (anonymous["server.address"], anonymous["server.port"])


# -- 8. OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS --------------------------------------------------


# A bug this test found, since fixed: valid methods (WebDAV's PROPFIND, an app's own) became
# `_OTHER` with no way to override the list, which the conventions require -- through
# OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS if by environment: comma-separated, case-sensitive, a
# full replacement of the default list.
def test_known_methods_option_reads_the_standard_variable() -> None:
    variable = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
    assert sc.METHODS == frozenset(load_config({}).http_known_methods)
    config = load_config({variable: " GET, PROPFIND ,FOOBAR,"})
    assert ("GET", "PROPFIND", "FOOBAR") == config.http_known_methods
    assert f"env:{variable}" == config.source_of("http_known_methods")
    assert ("get",) == load_config({variable: "get"}).http_known_methods  # case-sensitive
    assert ("PUT",) == load_config({variable: "GET"}, http_known_methods=["PUT"]).http_known_methods
    for bad in ("GET,BAD METHOD", "GET,{}", ","):
        with pytest.raises(ConfigError, match=f"http_known_methods.*from env:{variable}"):
            load_config({variable: bad})
    for given in ((), [b"GET"], "GET\r\nX: y", 7):
        with pytest.raises(ConfigError, match="http_known_methods"):
            load_config({}, http_known_methods=given)


# A bug this test found, since fixed: (the same finding) the override reaches the span's method,
# its name and the RED `method` label; a method left out of the list -- POST here -- is `_OTHER`.
@pytest.mark.parametrize("name", sorted(WEBS))
def test_known_methods_override_spans_and_red_labels(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,FOOBAR")
    with capture(**settings.OBSKIT) as captured, WEBS[name].serving() as web:
        assert 200 == web.get("/items/1", method="FOOBAR").status
        assert 200 == web.get("/items/2", method="POST").status
        foobar, post = captured.spans()
    assert f"FOOBAR {web.routes.item}" == foobar.name
    assert "FOOBAR" == attrs(foobar)["http.request.method"]
    assert "http.request.method_original" not in attrs(foobar)
    assert f"HTTP {web.routes.item}" == post.name
    assert ("_OTHER", "POST") == (
        attrs(post)["http.request.method"],
        attrs(post)["http.request.method_original"],
    )
    assert {
        ("FOOBAR", web.routes.item, "200"): 1.0,
        ("_OTHER", web.routes.item, "200"): 1.0,
    } == all_requests_total()


# A bug this test found, since fixed: (the same finding) an adapter built before a
# reconfiguration follows the new list, as it follows every other option.
def test_known_methods_follow_a_reconfiguration(cap: Capture) -> None:
    app = WsgiMiddleware(wsgi_app)
    list(app(environ("/dav", "PROPFIND"), lambda *args: None))
    obskit.configure(**settings.OBSKIT, http_known_methods="GET,PROPFIND")
    list(app(environ("/dav", "PROPFIND"), lambda *args: None))
    before, after = cap.spans()
    assert ("HTTP", "_OTHER") == (before.name, attrs(before)["http.request.method"])
    assert ("PROPFIND", "PROPFIND") == (after.name, attrs(after)["http.request.method"])
