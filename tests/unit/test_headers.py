"""Header getters the adapters hand the request pipeline (ASGI pairs, WSGI environ)."""

from __future__ import annotations

from obskit.http._pipeline import header_getter_from_environ, header_getter_from_pairs


def test_asgi_pairs_are_looked_up_by_lowercase_name() -> None:
    get = header_getter_from_pairs([(b"traceparent", b"00-ab"), (b"x-request-id", b"r-1")])
    assert "00-ab" == get("traceparent")
    assert "r-1" == get("x-request-id")
    assert get("baggage") is None


def test_asgi_repeated_headers_are_comma_joined_in_order() -> None:
    get = header_getter_from_pairs(
        [(b"baggage", b"a=1"), (b"accept", b"text/plain"), (b"baggage", b"b=2"), (b"baggage", b"c")]
    )
    assert "a=1,b=2,c" == get("baggage")
    assert "text/plain" == get("accept")


def test_asgi_pairs_from_any_iterable_and_latin1_values() -> None:
    get = header_getter_from_pairs(iter([(b"user-agent", "caf\u00e9".encode("latin-1"))]))
    assert "caf\u00e9" == get("user-agent")


def test_environ_headers_use_cgi_names() -> None:
    get = header_getter_from_environ({"HTTP_X_REQUEST_ID": "r-2", "HTTP_TRACEPARENT": "00-cd"})
    assert "r-2" == get("x-request-id")
    assert "00-cd" == get("traceparent")
    assert get("tracestate") is None
