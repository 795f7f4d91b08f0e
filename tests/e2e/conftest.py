"""Fixtures of the end-to-end export tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import obskit
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[OtlpGrpcReceiver | OtlpHttpReceiver]:
    """A running OTLP receiver for each protocol; obskit is shut down before it stops."""
    receiver_class = OtlpGrpcReceiver if request.param == "grpc" else OtlpHttpReceiver
    with receiver_class() as rx:
        try:
            yield rx
        finally:
            obskit.shutdown(timeout=2.0)


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Exceptions that ended a thread during the test (an obskit or export thread must never
    die)."""
    errors: list[str] = []

    def hook(args: Any) -> None:
        name = args.thread.name if args.thread is not None else "?"
        errors.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", hook)
    return errors
