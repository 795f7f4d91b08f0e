"""Findings of a security review (2026-11-25) of what obskit writes and sends, each pinned by a
test: secrets the JSON lines let through, a redaction pattern a client could stall, query keys
of presigned URLs and OAuth flows in spans, a token in a URL's user name shown by the CLI and
logs. The OTLP log export's redaction is tested in
``tests/e2e/test_adversarial_otlp_signals.py``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pytest

import obskit
from obskit.config import masked_url
from obskit.http import _semconv as sc
from obskit.logging import redact_text, setup_logging


def _lines(**setup: Any) -> tuple[io.StringIO, logging.Logger]:
    buffer = io.StringIO()
    setup_logging(stream=buffer, **setup)
    return buffer, logging.getLogger("sec")


def _written(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if '"sec"' in line]


# A bug this test found, since fixed: obskit/logging.py compared keys as they were spelled (so
# X-Api-Key was not api_key), knew no credential/access_key/dsn/auth keys, and turned a mapping
# message or argument into text before its keys could be looked at; only card, bearer and basic
# patterns were looked for in text
def test_common_secret_shapes_are_masked_in_json_lines() -> None:
    buffer, log = _lines()
    log.info("upstream", extra={"headers": {"X-Api-Key": "k1", "Authorization": "Bearer zz"}})
    log.info("login", extra={"auth": "a1", "credentials": "c1", "aws_access_key_id": "AKIA1"})
    log.info("payload %s", {"password": "hunter2", "n": 1})
    log.info({"password": "hunter3", "user": "ann"})
    log.info("settings", extra={"db": "DbSettings(user='app', password='hunter4')"})
    log.info("connecting to postgresql://app:hunter5@db:5432/prod")
    log.info("retrying with password=hunter6 and token: t0k3n")
    log.info("sent Authorization: Token 9944b09199c62bcf9418ad846dd0e4bb")
    log.info("kept", extra={"author": "Ann", "retries": 100})
    text = buffer.getvalue()
    for secret in ("k1", "zz", "a1", "c1", "AKIA1", "hunter", "t0k3n", "9944b0"):
        assert secret not in text, secret
    lines = _written(buffer)
    assert "payload {'password': '[REDACTED]', 'n': 1}" == lines[2]["message"]
    assert "connecting to postgresql://app:[REDACTED]@db:5432/prod" == lines[5]["message"]
    assert "sent Authorization: Token [REDACTED]" == lines[7]["message"]
    assert ("Ann", 100) == (lines[8]["author"], lines[8]["retries"])  # not secrets


def test_the_direct_path_masks_a_mapping_message_too() -> None:
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    log = obskit.get_logger("sec")
    log.info({"token": "t0k"})
    log.info("payload %s", {"secret": "s3"})
    assert "t0k" not in buffer.getvalue()
    assert "s3" not in buffer.getvalue()


# A bug this test found, since fixed: obskit/logging.py _EMAIL was tried from every character of
# a long run with no domain after its @: quadratic time, 450 ms for 16,000 characters, on text a
# client sends (a query string in uvicorn's access line) when log_redact_emails is on
@pytest.mark.parametrize(
    "hostile",
    [
        "a" * 200_000 + "@",
        "a@" * 100_000,
        "x@" + "b." * 100_000,
        "http://" * 30_000,
        "password " * 30_000,
        "x://" + "a:" * 100_000,
        "a-" * 40_000 + "://",  # found by the review of the fixes: quadratic in _USERINFO
    ],
)
def test_redaction_stays_linear_on_hostile_text(hostile: str) -> None:
    redact_text(hostile[:1000], emails=True)  # compiled and warm
    started = time.perf_counter()
    redact_text(hostile, emails=True)
    # Quadratic, the first case alone took minutes; linear, well under a second on any host.
    assert time.perf_counter() - started < 1.0


def test_emails_are_still_found_after_the_fix() -> None:
    text = "to ann@example.com, bob.smith+x@mail.example.co.uk; not a@b"
    assert "to [REDACTED], [REDACTED]; not a@b" == redact_text(text, emails=True)


# A bug this test found, since fixed: obskit/http/_semconv.py SECRET_QUERY_KEYS held the four
# keys the semantic conventions name, not the SigV4 ones boto3's presigned URLs carry nor OAuth's
# tokens: url.full, url.query and error texts kept X-Amz-Security-Token and access_token
@pytest.mark.parametrize(
    "key",
    [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "access_token",
        "id_token",
        "refresh_token",
        "client_secret",
        "api_key",
        "apikey",
        "password",
        "Signature",
        "sig",
    ],
)
def test_secret_query_keys_of_presigned_urls_and_oauth_are_redacted(key: str) -> None:
    query = f"page=2&{key}=SECRETVALUE&q=shoes"
    assert f"page=2&{key}=REDACTED&q=shoes" == sc.redact_query(query)
    assert "REDACTED" in sc.redact_query(f"{key.upper()}=SECRETVALUE")  # any case


# A bug this test found, since fixed: obskit/config.py masked_url hid a URL's password only, so
# a token given as the user name (https://<token>@collector) was shown whole by obskit doctor,
# obskit cardinality and configure()'s startup line
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://glc_eyJvIjoiMTIz@otlp.example.com:4318", "https://***@otlp.example.com:4318"),
        ("https://user:pw@otlp.example.com/x", "https://user:***@otlp.example.com/x"),
        ("https://otlp.example.com/x#tok=abc", "https://otlp.example.com/x#***"),
        ("https://otlp.example.com:4318/v1/traces", "https://otlp.example.com:4318/v1/traces"),
    ],
)
def test_masked_urls_hide_any_user_info(url: str, shown: str) -> None:
    assert shown == masked_url(url)


# Found by a review of the fixes above, since fixed: the first version of the new text patterns
# masked ordinary words and let common spellings through; a mapping formatted into a message
# was rewritten (ints as strings, a Counter as a dict) or, if it could not be walked, lost
@pytest.mark.parametrize(
    "text",
    [
        "Sending the weekly digest newsletter to 120 subscribers",
        "Message digest computed for upload.bin",
        "/etc/passwd: permission denied",
        "pwd: /srv/app, python 3.11",
        "GET http://api.internal:8080?email=bob@example.com returned 200",
        "the token expired; max_tokens=100 tokenizer=bert",
        "basic validation failed for field email",  # masked before this session too
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert text == redact_text(text)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "refresh_token=abc&client_secret=s3cr3t",
            "refresh_token=[REDACTED]&client_secret=[REDACTED]",
        ),
        (
            "env DB_PASSWORD=hunter2 AWS_SECRET_ACCESS_KEY=wJalr",
            "env DB_PASSWORD=[REDACTED] AWS_SECRET_ACCESS_KEY=[REDACTED]",
        ),
        (
            'body {"user": "bob", "password": "hunter2"}',
            'body {"user": "bob", "password": "[REDACTED]"}',
        ),
        ("DbSettings(password='correct horse battery')", "DbSettings(password='[REDACTED]')"),
        ("Authorization: Digest username=abc", "Authorization: Digest [REDACTED]"),
        ("redis://:hunter2@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
    ],
)
def test_common_spellings_are_masked(text: str, masked: str) -> None:
    assert masked == redact_text(text)


def test_a_formatted_mapping_keeps_what_is_not_secret_as_str_writes_it() -> None:
    import collections
    import datetime

    class Lazy(collections.abc.Mapping):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> object:
            raise RuntimeError("settings are not configured")

        def __iter__(self) -> Any:
            raise RuntimeError("settings are not configured")

        def __len__(self) -> int:
            return 1

        def __repr__(self) -> str:
            return "<Settings db=...>"

    buffer, log = _lines()
    counts = collections.Counter("aab")
    log.info("counts %s", counts)
    log.info("%s and %s", {"x": {1, 2}}, {"y": b"raw", "at": datetime.date(2024, 1, 2)})
    log.info("users %s", [{"name": "bob", "password": "hunter2"}])
    log.info("cfg %s", Lazy())
    assert [
        f"counts {counts}",
        "{'x': {1, 2}} and {'y': b'raw', 'at': datetime.date(2024, 1, 2)}",
        "users [{'name': 'bob', 'password': '[REDACTED]'}]",
        "cfg <Settings db=...>",
    ] == [line["message"] for line in _written(buffer)]


def test_the_exception_tag_leaves_exceptions_picklable_and_copyable() -> None:
    """The tag that lets a server's traceback line name its request holds plain values."""
    import copy
    import pickle

    from obskit.testing import capture
    from obskit.wsgi import ObskitMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("boom")

    from tests.wsgi_environ import environ

    with capture(service_name="sec"), pytest.raises(ValueError, match="boom") as raised:
        ObskitMiddleware(app)(environ("/x"), lambda *a: None)
    exc = raised.value
    (tag,) = exc._obskit_ended.values()  # type: ignore[attr-defined]
    assert 32 == len(f"{tag.context[0]:032x}")
    assert "boom" == str(pickle.loads(pickle.dumps(exc)))
    assert "boom" == str(copy.deepcopy(exc))


def test_a_tag_from_long_ago_names_no_request() -> None:
    """A pre-built exception raised by a request and logged much later (a background job that
    raises the same object) does not carry that request's trace into the later line."""
    import sys

    from obskit.testing import capture
    from obskit.wsgi import ObskitMiddleware
    from tests.wsgi_environ import environ

    shared = ValueError("shared")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise shared

    with capture(service_name="sec"), pytest.raises(ValueError, match="shared"):
        ObskitMiddleware(app)(environ("/x"), lambda *a: None)
    buffer, log = _lines()
    try:
        raise shared
    except ValueError:
        log.error("right after", exc_info=True)  # as the server logs it: the request's trace
        tags = shared._obskit_ended  # type: ignore[attr-defined]
        tags.update((thread, tag._replace(ended=time.time() - 60)) for thread, tag in tags.items())
        log.error("a minute later", exc_info=sys.exc_info())
    first, later = _written(buffer)
    assert 32 == len(first["trace_id"])
    assert "trace_id" not in later


# A bug this test found, since fixed (a review of 2026-11-25): the tag was one attribute of the
# exception, so an exception object raised out of several requests at once (the failed result
# of a shared future) named whichever request tagged it last -- under gunicorn's gthread
# workers, two thirds of the "Error handling request" lines named another request
def test_an_exception_shared_by_requests_on_two_threads_names_each_threads_request() -> None:
    import contextlib
    import threading

    from obskit.http._pipeline import _MAX_TAGS
    from obskit.testing import capture
    from obskit.wsgi import ObskitMiddleware
    from tests.wsgi_environ import environ

    shared = RuntimeError("the shared future failed")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise shared

    ids = {"a": "0af7651916cd43dd8448eb211c80319a", "b": "0af7651916cd43dd8448eb211c80319b"}
    a_raised, b_logged = threading.Event(), threading.Event()

    def serve(name: str) -> None:  # as a server thread does: the request, then its error line
        headers = {"HTTP_TRACEPARENT": f"00-{ids[name]}-b7ad6b7169203331-01"}
        try:
            ObskitMiddleware(app)(environ("/x", **headers), lambda *a: None)
        except RuntimeError:
            if name == "a":  # b's request raises the same object before a's line is written
                a_raised.set()
                b_logged.wait(5)
            else:
                a_raised.wait(5)
            log.exception("Error handling request %s", name)
            if name == "b":
                b_logged.set()

    with capture(service_name="sec"):
        buffer, log = _lines()
        threads = [threading.Thread(target=serve, args=(name,)) for name in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        lines = {line["message"][-1]: line["trace_id"] for line in _written(buffer)}
        assert {"a": ids["a"], "b": ids["b"]} == lines
        # An exception raised out of requests on many threads at once keeps a bounded number
        # of tags (threads alive together: a finished thread's id is given to the next).
        together = threading.Barrier(_MAX_TAGS + 8, timeout=30)

        def raise_and_wait() -> None:
            with contextlib.suppress(RuntimeError):
                ObskitMiddleware(app)(environ("/x"), lambda *a: None)
            together.wait()

        threads = [threading.Thread(target=raise_and_wait) for _ in range(_MAX_TAGS + 8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert _MAX_TAGS == len(shared._obskit_ended)  # type: ignore[attr-defined]


# Two bugs this test found, since fixed (a review of the fix above): a request obskit does not
# trace (an excluded path: /readyz) that raised the same object named the request it had left
# before on that thread; and with more than 32 threads tagging at once, a thread's own tag could
# be evicted by another's
@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_an_untraced_request_that_raises_a_shared_exception_names_no_request(kind: str) -> None:
    import asyncio

    from obskit.asgi import ObskitMiddleware as AsgiMiddleware
    from obskit.testing import capture
    from obskit.wsgi import ObskitMiddleware as WsgiMiddleware
    from tests.wsgi_environ import environ

    shared = RuntimeError("the cached failure")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise shared

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        raise shared

    def serve(path: str) -> None:
        traceparent = "00-0af7651916cd43dd8448eb211c80319a-b7ad6b7169203331-01"
        if kind == "wsgi":
            env = environ(path, HTTP_TRACEPARENT=traceparent)
            WsgiMiddleware(wsgi_app)(env, lambda *a: None)
        else:
            scope = {"type": "http", "method": "GET", "path": path, "headers": []}
            scope["headers"] = [(b"traceparent", traceparent.encode())]

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b""}

            async def send(message: dict[str, Any]) -> None:
                pass

            asyncio.run(AsgiMiddleware(asgi_app)(scope, receive, send))

    with capture(service_name="sec"):
        buffer, log = _lines()
        for path in ("/api/1", "/readyz"):
            try:
                serve(path)
            except RuntimeError:
                log.exception("Error handling request GET %s", path)
    api, ready = _written(buffer)
    assert "0af7651916cd43dd8448eb211c80319a" == api["trace_id"]
    assert "trace_id" not in ready


def test_a_threads_own_tag_survives_many_threads_tagging_at_once() -> None:
    import sys
    import threading

    from obskit.http._pipeline import _tag, ended_request

    missing: list[int] = []

    class Span:
        def __init__(self, n: int) -> None:
            self.n = n

        def get_span_context(self) -> tuple[int, int, bool, int, None, bool]:
            return (self.n, self.n, False, 1, None, True)

    class Request:
        method, route, request_id = "GET", "/x", "r"

        def __init__(self, n: int) -> None:
            self.span = Span(n)

    def tag_and_read(n: int, shared: BaseException, start: threading.Barrier) -> None:
        start.wait()
        _tag(shared, Request(n))  # type: ignore[arg-type]
        ended = ended_request(shared, time.time())
        if ended is None or ended.context[0] != n:
            missing.append(n)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(100):  # each round a new object, past 32 tags as 64 threads tag it at once
            shared, start = RuntimeError("shared"), threading.Barrier(64, timeout=10)
            threads = [
                threading.Thread(target=tag_and_read, args=(n, shared, start)) for n in range(1, 65)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert [] == missing


# A bug this test found, since fixed (a third review): two threads tagging a fresh exception
# object at once each assigned a dict of their own, the second replacing the first; the first
# thread's line then fell back to the one tag left: the other thread's request
def test_two_threads_tagging_a_fresh_exception_at_once_keep_both_tags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import types

    from obskit.http import _pipeline

    real = _pipeline._get_ident
    local = threading.local()

    def slow_ident() -> int:  # a thread switch inside the first tagging, on both threads
        if not getattr(local, "done", False):
            local.done = True
            time.sleep(0.05)
        return real()

    monkeypatch.setattr(_pipeline, "_get_ident", slow_ident)

    class Span:
        def __init__(self, n: int) -> None:
            self.n = n

        def get_span_context(self) -> tuple[int, int, bool, int, None, bool]:
            return (self.n, 7, False, 1, None, True)

    shared = RuntimeError("shared")
    named: dict[int, str | None] = {}

    def serve(n: int) -> None:
        request = types.SimpleNamespace(span=Span(n), method="GET", route="/r", request_id=str(n))
        _pipeline._tag(shared, request)  # type: ignore[arg-type]
        time.sleep(0.1)  # the server logs the exception a moment later
        ended = _pipeline.ended_request(shared, time.time())
        named[n] = None if ended is None else ended.request_id

    threads = [threading.Thread(target=serve, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert {1: "1", 2: "2"} == named


# A bug this test found, since fixed (a third review): Flask logs "Exception on /readyz [GET]"
# itself, inside the app, and obskit's got_request_exception receiver only noted the exception
# of a traced request: an excluded path's line named the earlier request's trace
def test_flasks_line_for_an_excluded_path_raising_a_shared_exception_names_no_request() -> None:
    import flask

    from obskit.flask import Obskit
    from obskit.testing import capture

    shared = RuntimeError("the cached failure")
    app = flask.Flask("shared")

    @app.get("/api/<int:n>")
    def api(n: int) -> str:
        raise shared

    @app.get("/readyz")
    def ready() -> str:
        raise shared

    with capture(service_name="sec"):
        Obskit(app)
        buffer, _ = _lines()
        client = app.test_client()
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319a-b7ad6b7169203331-01"}
        for path, sent in (("/api/1", headers), ("/readyz", {})):
            with client.get(path, headers=sent) as response:  # closed: the request ends
                assert 500 == response.status_code
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    api_line, ready_line = [line for line in lines if line["message"].startswith("Exception on")]
    assert "0af7651916cd43dd8448eb211c80319a" == api_line["trace_id"]
    assert "/readyz" in ready_line["message"]
    assert "trace_id" not in ready_line
