"""obskit's W3C Baggage codec (obskit.tracing._baggage), value by value."""

from __future__ import annotations

import pytest
from opentelemetry import baggage

from obskit.tracing import _baggage


def read(header: str) -> tuple[dict[str, object], list[str]]:
    """The entries ``header`` gives, and the reasons counted while reading it."""
    reasons: list[str] = []
    ctx = _baggage.extract(header, None, reasons.append)
    return dict(baggage.get_all(ctx)), reasons


def write(entries: dict[str, object]) -> tuple[str, list[str]]:
    reasons: list[str] = []
    return _baggage.serialize(entries.items(), reasons.append), reasons


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("k=a+b", {"k": "a+b"}),  # '+' is a baggage-octet, not a space
        ("k=DF%2028", {"k": "DF 28"}),
        ("k=caf%C3%A9", {"k": "café"}),
        ("k=bad%FF", {"k": "bad\ufffd"}),  # invalid UTF-8: U+FFFD, as the Recommendation says
        (" k = v , j=w ", {"k": "v", "j": "w"}),  # optional white space
        ("k=v,,j=w", {"k": "v", "j": "w"}),  # empty list-members
        ("k=", {"k": ""}),
    ],
)
def test_values_are_read_as_w3c_baggage_says(header: str, expected: dict[str, object]) -> None:
    assert (expected, []) == read(header)


@pytest.mark.parametrize(
    "member", ["k v=1", "k=a b", 'k="q"', "k=a\\b", "=v", "novalue", "k\u00e9=v"]
)
def test_an_invalid_member_is_skipped_alone_and_counted(member: str) -> None:
    assert ({"ok": "1"}, ["member"]) == read(f"{member},ok=1")


def test_properties_are_kept_apart_from_the_value_and_written_again() -> None:
    entries, _ = read("k=v; p=1 ;flag,j=w")
    assert ("v", "w") == (entries["k"], entries["j"])
    assert "p=1;flag" == getattr(entries["k"], "properties", None)
    assert ("k=v;p=1;flag,j=w", []) == write(entries)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a b", "a%20b"),
        ("50%", "50%25"),  # '%' is encoded so that the value decodes to itself
        ('x,y;z"\\', "x%2Cy%3Bz%22%5C"),
        ("café", "caf%C3%A9"),
        ("a+b/c:d", "a+b/c:d"),  # baggage-octets go as they are
    ],
)
def test_values_are_written_percent_encoded(value: str, encoded: str) -> None:
    assert (f"k={encoded}", []) == write({"k": value})
    assert {"k": value} == read(f"k={encoded}")[0]


def test_a_key_that_is_not_a_token_is_not_written() -> None:
    assert ("ok=1", ["member"]) == write({"bad key": "x", "ok": "1"})


def test_limits_keep_whole_entries_from_the_left() -> None:
    members = {f"m{i:03d}": "v" * 80 for i in range(120)}  # about 10 KB
    header, reasons = write(members)
    assert len(header.encode()) <= _baggage.MAX_BYTES
    kept = dict(member.split("=") for member in header.split(","))
    assert list(kept) == list(members)[: len(kept)]
    assert len(kept) >= 64
    assert ["length"] == reasons
    entries, reasons = read(",".join(f"{k}={v}" for k, v in members.items()))
    assert list(entries) == list(members)[: len(entries)]
    assert len(entries) >= 64
    assert ["length"] == reasons


def test_at_most_180_members_are_read() -> None:
    entries, reasons = read(",".join(f"k{i}=v" for i in range(200)))
    assert (180, ["members"]) == (len(entries), reasons)


def test_a_header_far_over_the_limits_is_not_read() -> None:
    assert ({}, ["length"]) == read("k=" + "v" * (9 * _baggage.MAX_BYTES))
