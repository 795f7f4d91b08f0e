"""The real services tests talk to (PostgreSQL on loopback), and how a test asks for one."""

from __future__ import annotations

import os

import pytest

DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=2"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def require_postgres() -> None:
    """Fail under CI=true, skip elsewhere, when PostgreSQL is not on 127.0.0.1:5432."""
    try:
        import psycopg

        psycopg.connect(DSN).close()
    except Exception as exc:
        message = f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
