"""Review of the changes since fcc41e5 (cross-process cardinality limit, server logging,
buffered handler): each test names the bug it found, all since fixed."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import subprocess
import sys

import pytest

import obskit
import obskit._state
from tests.child_process import child_env


def _messages(text: str) -> list[str]:
    return [json.loads(line)["message"] for line in text.splitlines() if line.startswith("{")]


# --- obskit/logging.py _after_the_request ------------------------------------------------------


# A bug this test found, since fixed: obskit/logging.py _after_the_request (called from
# CorrelationFilter.filter for a line outside any span) does getattr(record.request,
# '_obskit_request', None) unguarded: a `request` extra whose attribute lookup raises something
# other than AttributeError (flask.request, a werkzeug LocalProxy, outside a request context raises
# RuntimeError) raises out of Handler.filter into the caller's log call, a WARNING included; before
# fcc41e5 the line was written with request='<LocalProxy unbound>'. Fix: wrap the getattr chain in
# _after_the_request in try/except Exception returning (ctx, request).
def test_a_request_extra_that_raises_on_getattr_does_not_reach_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flask = pytest.importorskip("flask")
    monkeypatch.setattr(obskit._state, "raise_internal_errors", False)  # production behaviour
    stream = io.StringIO()
    obskit.setup_logging(stream=stream, sample_rate=0.5)  # sampling: the CorrelationFilter
    logging.getLogger("review.extra").warning("kept", extra={"request": flask.request})
    assert ["kept"] == _messages(stream.getvalue())


# A bug this test found, since fixed: obskit/logging.py JsonFormatter.format -> _after_the_request:
# the same unguarded getattr on the record's `request` extra (flask.request outside a request
# context raises RuntimeError) makes the whole line unformattable: it is written as message '?'
# with an obskit 'could not be formatted' warning, where before fcc41e5 it was written whole. Fix:
# catch Exception around the getattr chain in _after_the_request.
def test_a_request_extra_that_raises_on_getattr_keeps_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flask = pytest.importorskip("flask")
    monkeypatch.setattr(obskit._state, "raise_internal_errors", False)
    stream = io.StringIO()
    obskit.setup_logging(stream=stream)
    logging.getLogger("review.extra").info("kept", extra={"request": flask.request})
    assert ["kept"] == _messages(stream.getvalue())


# --- obskit/logging.py BufferedStreamHandler: lines lost when the handler is dropped ----------


def _run(script: str, cwd: pathlib.Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr
    return done.stderr


# A bug this test found, since fixed: obskit/logging.py setup_logging / BufferedStreamHandler: the
# rewritten handler keeps INFO lines in its own _pending list, and setup_logging replaces the
# previous obskit handler in root.handlers without flushing it; on configure() again the old
# handler is dropped (its flusher holds only a weakref) and every line waiting in it is lost
# silently (not counted) -- the app's line and configure()'s own summary. Before fcc41e5 the lines
# were already in the stream. Fix: flush (or close, with a close() that flushes) the replaced
# handler in setup_logging after the swap.
def test_buffered_lines_survive_a_reconfigure(tmp_path: pathlib.Path) -> None:
    script = """
import gc, logging, obskit
obskit.configure(service_name="review", logging=True, log_flush_interval=60.0)
logging.getLogger("app").info("before the reconfigure")
obskit.configure(service_name="review", logging=True, log_flush_interval=60.0, log_level="DEBUG")
gc.collect()
logging.getLogger("app").info("after the reconfigure")
"""
    messages = _messages(_run(script, tmp_path))
    assert "before the reconfigure" in messages
    assert "after the reconfigure" in messages


# A bug this test found, since fixed: obskit/_runtime.py Runtime.shutdown ('Flush and stop
# everything') removes the JSON handler from the root logger without flushing it; with
# log_flush_interval the BufferedStreamHandler's own buffer holds the INFO lines, so once the
# runtime is replaced (configure(logging=False)) they are lost, not written and not counted. Fix:
# flush() (then close()) the json_handler in Runtime.shutdown after removing it.
def test_buffered_lines_survive_shutdown(tmp_path: pathlib.Path) -> None:
    script = """
import gc, logging, obskit
obskit.configure(service_name="review", logging=True, log_flush_interval=60.0)
logging.getLogger("app").info("before the shutdown")
obskit.shutdown()
obskit.configure(service_name="review", logging=False)
gc.collect()
"""
    assert "before the shutdown" in _messages(_run(script, tmp_path))
