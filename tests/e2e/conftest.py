"""Fixtures of the end-to-end export tests."""

from __future__ import annotations

from collections.abc import Iterator

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
