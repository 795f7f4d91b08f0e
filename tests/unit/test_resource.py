"""obskit's resource: one per configuration for every signal, with a ``service.instance.id``
per process."""

from __future__ import annotations

import json
import os
import uuid

import pytest

import obskit
from obskit import _resource
from obskit._runtime import resource_attributes


def test_each_process_is_an_instance_and_a_users_id_is_theirs() -> None:
    """A forked child renews the id obskit made (and the pid), not one the user set."""
    made = resource_attributes(obskit.configure(traces_exporter="none"))
    mine = resource_attributes(
        obskit.configure(traces_exporter="none", resource_attributes={"service.instance.id": "i-1"})
    )
    assert 4 == uuid.UUID(made["service.instance.id"]).version
    assert made["service.instance.id"] == _resource.instance_id()  # stable in one process
    assert {} == {k: v for k, v in _resource.for_this_process(made).items() if made[k] != v}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            seen = [_resource.for_this_process(made), _resource.for_this_process(mine)]
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_made, child_mine = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert pid == child_made["process.pid"] == child_mine["process.pid"]
    assert child_made["service.instance.id"] not in (made["service.instance.id"], "i-1")
    assert "i-1" == child_mine["service.instance.id"]  # the user's own stays as it was


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        (None, {"team": "payments", "k": "env"}),
        ({"k": "argument"}, {"team": "payments", "k": "argument"}),
        ("k=argument,pod=p1", {"team": "payments", "k": "argument", "pod": "p1"}),
    ],
)
def test_resource_attributes_argument_merges_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, argument: object, expected: dict[str, str]
) -> None:
    """OTEL_RESOURCE_ATTRIBUTES and the resource_attributes argument merge key by key (the
    argument wins a key both set), as the SDK's Resource.create does; service.version from
    either is taken with the source it came from."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=payments,k=env,service.version=2.0")
    options = {} if argument is None else {"resource_attributes": argument}
    config = obskit.configure(traces_exporter="none", **options)  # type: ignore[arg-type]
    assert {**expected, "service.version": "2.0"} == dict(config.resource_attributes)
    assert ("2.0", "env:OTEL_RESOURCE_ATTRIBUTES") == (
        config.service_version,
        config.sources["service_version"],
    )
    attrs = resource_attributes(config)
    assert expected == {k: attrs[k] for k in expected}
