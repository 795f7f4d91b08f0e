"""A PEP 3333 environ as a WSGI server builds it, for tests that call WSGI apps directly."""

from __future__ import annotations

import io
from typing import Any


def environ(path: str, method: str = "GET", **extra: Any) -> dict[str, Any]:
    """The environ of ``method path`` (header values as latin-1 decoded text), plus ``extra``."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    env.update(extra)
    return env
