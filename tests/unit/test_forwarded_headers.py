"""``trusted_proxy_hops`` (``OBSKIT_TRUSTED_PROXY_HOPS``): behind that many reverse proxies that
append to ``X-Forwarded-For``/``-Host``/``-Proto``, SERVER spans name the original client, host
and scheme, as the HTTP semantic conventions prefer (``client.address`` from
``X-Forwarded-For``, ``server.address``/``server.port`` from ``X-Forwarded-Host``, ``url.scheme``
from ``X-Forwarded-Proto``), and keep the socket's peer as ``network.peer.address``. Only the
entries the trusted proxies wrote count -- the ``hops``-th from the right, Werkzeug ``ProxyFix``'s
rule -- so a client cannot choose what is recorded by sending the headers itself; with the
default 0 they are not read at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:  # alone; under tests/frameworks its conftest did the same
    from tests.frameworks.django_app import settings as _project

    settings.configure(**{k: getattr(_project, k) for k in dir(_project) if k.isupper()})
    django.setup()

from obskit.config import ConfigError, load_config
from obskit.testing import Capture, capture
from obskit.wsgi import ObskitMiddleware
from tests.frameworks.contract_apps import WEBS, Web
from tests.otlp_receiver import attributes as attrs
from tests.wsgi_environ import environ

BEHIND_ONE_PROXY = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "shop.example.com",
    "X-Forwarded-Proto": "https",
}


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def recorded(cap: Capture, **headers: str) -> dict[str, Any]:
    """The SERVER span attributes of one WSGI request from 10.0.0.2 with ``headers``."""
    cap.clear()
    extra = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    body = ObskitMiddleware(wsgi_app)(
        environ("/items/7", REMOTE_ADDR="10.0.0.2", HTTP_HOST="internal:8000", **extra),
        lambda status, headers, exc_info=None: None,
    )
    assert [b"ok"] == list(body)
    (span,) = cap.spans()
    return attrs(span)


def origin(attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        attributes.get(key)
        for key in (
            "client.address",
            "network.peer.address",
            "server.address",
            "server.port",
            "url.scheme",
        )
    )


@pytest.fixture
def one_hop() -> Iterator[Capture]:
    with capture(service_name="edge", trusted_proxy_hops=1, trust_forwarded_host=True) as captured:
        yield captured


@pytest.mark.parametrize("name", sorted(WEBS))
def test_every_adapter_names_the_client_host_and_scheme_the_proxy_saw(name: str) -> None:
    with capture(service_name="edge", trusted_proxy_hops=1, trust_forwarded_host=True) as cap:
        web: Web
        with WEBS[name].serving() as web:
            assert 200 == web.get("/items/7", headers=BEHIND_ONE_PROXY).status
        (span,) = [s for s in cap.spans() if s.name.startswith("GET")]
        seen = attrs(span)
    assert ("203.0.113.9", web.client_address, "shop.example.com", 443, "https") == origin(seen)


@pytest.mark.parametrize("name", sorted(WEBS))
def test_by_default_forwarded_headers_are_not_read(name: str) -> None:
    with capture(service_name="edge") as cap:
        web: Web
        with WEBS[name].serving() as web:
            assert 200 == web.get("/items/7", headers=BEHIND_ONE_PROXY).status
        (span,) = [s for s in cap.spans() if s.name.startswith("GET")]
        seen = attrs(span)
    assert (web.client_address, None, "http") == (
        seen.get("client.address"),
        seen.get("network.peer.address"),
        seen.get("url.scheme"),
    )
    assert "shop.example.com" != seen.get("server.address")


def test_only_the_entries_the_trusted_proxies_appended_count() -> None:
    """The client sends its own X-Forwarded-* (``1.1.1.1``, ``evil.example``, ``http``); the one
    trusted proxy appends what it saw. Two hops trusted: the entry the outer proxy appended."""
    sent = {
        "X-Forwarded-For": "1.1.1.1, 203.0.113.9",
        "X-Forwarded-Host": "evil.example, shop.example.com:8443",
        "X-Forwarded-Proto": "http,https",
    }
    with capture(service_name="edge", trusted_proxy_hops=1, trust_forwarded_host=True) as cap:
        one = recorded(cap, **sent)
    with capture(service_name="edge", trusted_proxy_hops=2, trust_forwarded_host=True) as cap:
        two = recorded(cap, **sent)
    assert ("203.0.113.9", "10.0.0.2", "shop.example.com", 8443, "https") == origin(one)
    assert ("1.1.1.1", "10.0.0.2", "evil.example", 80, "http") == origin(two)


def test_fewer_entries_than_trusted_hops_are_ignored() -> None:
    """Two proxies trusted, one entry: the request did not come through both, and what the
    headers say is not trusted (the socket's facts stay)."""
    with capture(service_name="edge", trusted_proxy_hops=2, trust_forwarded_host=True) as cap:
        seen = recorded(cap, **BEHIND_ONE_PROXY)
    assert ("10.0.0.2", None, "internal", 8000, "http") == origin(seen)


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("198.51.100.7:5678", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("unknown", "10.0.0.2"),
        ("evil.example", "10.0.0.2"),
        ("<script>", "10.0.0.2"),
        ("", "10.0.0.2"),
        ("1.2.3.4" + ",1.2.3.4" * 2000, "10.0.0.2"),  # absurdly long: not read
    ],
)
def test_a_forwarded_for_entry_must_be_an_address(
    one_hop: Capture, forwarded_for: str, client: str
) -> None:
    seen = recorded(one_hop, **{"X-Forwarded-For": forwarded_for})
    assert client == seen["client.address"]
    expected_peer = None if client == "10.0.0.2" else "10.0.0.2"
    assert expected_peer == seen.get("network.peer.address")


@pytest.mark.parametrize(
    ("proto", "host", "expected"),
    [
        ("HTTPS", "shop.example.com", ("shop.example.com", 443, "https")),
        ("javascript", "shop.example.com", ("shop.example.com", 80, "http")),
        ("https", "[2001:db8::5]:9443", ("2001:db8::5", 9443, "https")),
        ("https", "a b", ("internal", 8000, "https")),  # names no host: the Host header's
        ("https", "", ("internal", 8000, "https")),
    ],
)
def test_forwarded_host_and_proto_are_parsed_like_host_and_scheme(
    one_hop: Capture, proto: str, host: str, expected: tuple[Any, ...]
) -> None:
    seen = recorded(one_hop, **{"X-Forwarded-Proto": proto, "X-Forwarded-Host": host})
    assert expected == origin(seen)[2:]


def test_the_client_the_proxy_saw_is_the_socket_peer_itself() -> None:
    """No proxy in between after all (the entry is the peer): no network.peer.address."""
    with capture(service_name="edge", trusted_proxy_hops=1, trust_forwarded_host=True) as cap:
        seen = recorded(cap, **{"X-Forwarded-For": "10.0.0.2"})
    assert ("10.0.0.2", None) == origin(seen)[:2]


def test_the_option_takes_a_small_count_from_argument_or_environment() -> None:
    assert 0 == load_config({}).trusted_proxy_hops
    assert 2 == load_config({"OBSKIT_TRUSTED_PROXY_HOPS": " 2 "}).trusted_proxy_hops
    assert 0 == load_config({"OBSKIT_TRUSTED_PROXY_HOPS": "0"}).trusted_proxy_hops
    assert 1 == load_config({}, trusted_proxy_hops=1).trusted_proxy_hops
    for bad in ("-1", "17", "one", "1.5", True):
        with pytest.raises(ConfigError, match="trusted_proxy_hops"):
            load_config({}, trusted_proxy_hops=bad)


# A gap a security review found, since closed: one count trusted all three headers, so behind
# a proxy that appends X-Forwarded-For but writes no X-Forwarded-Host (AWS ALB, nginx's
# default) the client's own X-Forwarded-Host named the server; Werkzeug's ProxyFix trusts it
# only when asked (x_host=0 by default), and so does obskit now
def test_x_forwarded_host_is_read_only_when_the_proxies_are_said_to_write_it() -> None:
    sent = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "login.attacker.example"}
    with capture(service_name="edge", trusted_proxy_hops=1) as cap:
        seen = recorded(cap, **sent, **{"X-Forwarded-Proto": "https"})
    assert ("203.0.113.7", "10.0.0.2", "internal", 8000, "https") == origin(seen)
    assert 1 == load_config({"OBSKIT_TRUSTED_PROXY_HOPS": "1"}).trusted_proxy_hops
    assert load_config({"OBSKIT_TRUST_FORWARDED_HOST": "true"}).trust_forwarded_host
    assert not load_config({}).trust_forwarded_host
