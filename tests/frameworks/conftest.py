"""Framework adapter tests: Django configured once from the test project, shared header cases."""

from __future__ import annotations

from collections.abc import Iterator

import django
import pytest
from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import trace

from obskit.testing import Capture, capture
from tests.frameworks.django_app import settings as project_settings

if not settings.configured:
    settings.configure(
        **{
            name: getattr(project_settings, name)
            for name in dir(project_settings)
            if name.isupper()
        }
    )
    django.setup()

_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
_PARENT_ID = "b7ad6b7169203331"
_TRACEPARENT = f"00-{_TRACE_ID}-{_PARENT_ID}-01"

#: Values a client might send as ``traceparent``, with the reason obskit counts them under in
#: ``obskit_propagation_invalid_total``; each one must start a new trace. The value is the text as
#: sent; the contract suite hands it to each test client as it reaches that app (``Web.wire`` in
#: contract_apps.py: for WSGI its UTF-8 bytes decoded as latin-1, as a WSGI server does).
INVALID_TRACEPARENTS = {
    "uppercase_hex": (f"00-{_TRACE_ID.upper()}-{_PARENT_ID.upper()}-01", "not_lowercase_hex"),
    "version_ff": (f"ff-{_TRACE_ID}-{_PARENT_ID}-01", "version"),
    "zero_trace_id": (f"00-{'0' * 32}-{_PARENT_ID}-01", "zero_id"),
    "zero_parent_id": (f"00-{_TRACE_ID}-{'0' * 16}-01", "zero_id"),
    "too_short": (f"00-{_TRACE_ID}-{_PARENT_ID[:-1]}-01", "length"),
    "version_00_with_suffix": (f"{_TRACEPARENT}-extra", "length"),
    # 55 bytes on the wire: two hex digits replaced by the two UTF-8 bytes of one character.
    "non_ascii": (f"00-{_TRACE_ID}-{_PARENT_ID[:12]}\u00e931-01", "not_lowercase_hex"),
    "10_kb": (f"01-{_TRACE_ID}-{_PARENT_ID}-01-{'a' * 10_240}", "length"),
    "two_headers": (f"{_TRACEPARENT}, 00-{'1' * 32}-{'2' * 16}-01", "length"),
    "uppercase_trace_id": (f"00-{_TRACE_ID.upper()}-{_PARENT_ID}-01", "not_lowercase_hex"),
    "garbage": ("garbage", "length"),
}

#: ``tracestate`` values that must be dropped (and counted under the reason given) while a valid
#: ``traceparent`` is still honoured.
INVALID_TRACESTATES = {
    "bad_member": ("vendor=opaque,Not A Key=1", "member"),
    "duplicate_key": ("vendor=a,vendor=b", "duplicate_key"),
    "33_members": (",".join(f"k{i}=v" for i in range(33)), "members"),
    "10_kb": (",".join(f"k{i}={'v' * 250}" for i in range(40)), "members"),
}


@pytest.fixture(params=sorted(INVALID_TRACEPARENTS))
def invalid_traceparent(request: pytest.FixtureRequest) -> tuple[str, str]:
    """One invalid ``traceparent`` value and its counted reason (parametrized over every case)."""
    return INVALID_TRACEPARENTS[request.param]


@pytest.fixture(params=sorted(INVALID_TRACESTATES))
def invalid_tracestate(request: pytest.FixtureRequest) -> tuple[str, str]:
    """One invalid or oversized ``tracestate`` value and its counted reason (every case)."""
    return INVALID_TRACESTATES[request.param]


@pytest.fixture
def any_config_capture() -> Iterator[Capture]:
    """Spans captured in memory whatever options the application configures obskit with.

    ``obskit.testing.capture()`` pins its sink, so an adapter that reconfigures obskit with its
    own options still reports here, and those options are the ones in effect.
    """
    with capture() as cap:
        yield cap


@pytest.fixture(autouse=True)
def _no_span_left_current() -> Iterator[None]:
    """Fail the test that leaves a span current: a context leak would parent later requests."""
    yield
    leaked = trace.get_current_span()
    if leaked.get_span_context().is_valid:
        otel_context.attach(otel_context.Context())  # later tests start from an empty context
        pytest.fail(f"a span is still current after the test: {leaked}")
