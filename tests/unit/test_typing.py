"""What a type checker sees of obskit's public API: mypy --strict over the snippets in
``typing_snippets/``, run once for them all.

A snippet marks each line mypy must refuse with ``# mypy: <error code>`` and each
``reveal_type`` with ``# revealed: <type>``; any other error, a missing one or another revealed
type fails its test. The snippets are never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from prometheus_client import Counter, Gauge, Histogram

import obskit
from obskit import config
from obskit._options import LogLevel, Options
from obskit.tracing.sampling import build_sampler

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = Path(__file__).with_name("typing_snippets")
FILES = sorted(SNIPPETS.glob("*.py"))

_REPORTED = re.compile(
    r"^(?P<file>[^:]+):(?P<line>\d+): (?:error: .*\[(?P<code>[a-z-]+)\]"
    r'|note: Revealed type is "(?P<type>.*)")$'
)
_EXPECTED = re.compile(r"#\s*(?:mypy: (?P<code>[a-z-]+)|revealed: (?P<type>.+?))\s*$")

Findings = dict[tuple[str, int], set[tuple[str, str]]]


@pytest.fixture(scope="module")
def reported() -> Findings:
    """``(file name, line) -> {("error", code) or ("revealed", type)}`` of one mypy run over
    every snippet, with this checkout's obskit (MYPYPATH, not an installed copy)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--show-error-codes",
            "--no-error-summary",
            "--hide-error-context",
            *map(str, FILES),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    found: Findings = {}
    for line in result.stdout.splitlines():
        match = _REPORTED.match(line)
        if match is None:
            assert ": error:" not in line, line  # an error without a code is not expected
            continue
        key = (Path(match["file"]).name, int(match["line"]))
        kind = ("error", match["code"]) if match["code"] else ("revealed", match["type"])
        found.setdefault(key, set()).add(kind)
    return found


def _expected(path: Path) -> Findings:
    expected: Findings = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        match = _EXPECTED.search(text)
        if match is not None:
            kind = ("error", match["code"]) if match["code"] else ("revealed", match["type"])
            expected[path.name, number] = {kind}
    return expected


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_mypy_sees_what_the_snippet_says(reported: Findings, path: Path) -> None:
    """mypy refuses exactly the marked lines and reveals the marked types."""
    found = {key: value for key, value in reported.items() if key[0] == path.name}
    assert found == _expected(path)


def _literals(annotation: object) -> set[object]:
    """The values of the ``Literal`` types in ``annotation`` (a union of them, or one)."""
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return {value for arg in get_args(annotation) for value in _literals(arg)}


def test_the_typed_options_are_the_options_configure_takes() -> None:
    """``Options`` has one key per option ``load_config()`` takes, none required, and its
    ``Literal`` choices are those ``Config`` holds (the samplers: ``config.SAMPLERS``; the log
    levels: the ones ``log_level`` takes), so the two cannot drift apart."""
    hints = get_type_hints(Options)
    assert set(hints) == set(config.OPTION_NAMES)
    assert Options.__optional_keys__ == frozenset(config.OPTION_NAMES)
    # config.SAMPLERS is made from Sampler: each of its names must be one build_sampler builds
    # (it takes any name it does not know for the rate-limited one).
    roots = {
        "always_on": "StaticSampler",
        "always_off": "StaticSampler",
        "traceidratio": "TraceIdRatioBased",
        "adaptive": "AdaptiveSampler",
        "ratelimited": "RateLimitedSampler",
    }
    for name in config.SAMPLERS:
        built: Any = build_sampler(config.load_config({}, sampler=name))
        root = built._root if name.startswith("parentbased_") else built
        assert roots[name.removeprefix("parentbased_")] == type(root).__name__, name
    assert {level.upper() for level in get_args(LogLevel)} == set(config._LEVELS)
    held = get_type_hints(config.Config, vars(config))  # its __module__ is "obskit"
    with_choices = {name for name in hints if _literals(hints[name])}
    assert {n for n in with_choices if n not in ("sampler", "log_level", "log_levels")} == {
        name for name in held if _literals(held[name])
    }
    for name in with_choices:
        if name not in ("sampler", "log_level", "log_levels"):
            assert _literals(hints[name]) == _literals(held[name]), name
        for value in _literals(hints[name]):
            given = {"service": value} if name == "log_levels" else value
            config.load_config({}, **{name: given})  # taken at run time too


def test_an_instruments_children_are_of_its_class_the_overflow_one_too() -> None:
    """What ``Instrument[M].labels() -> M`` says holds at run time: below and past the limit."""
    for declare, kind in ((obskit.counter, Counter), (obskit.gauge, Gauge)):
        metric = declare(f"typing_children_{kind.__name__.lower()}", "Children.", ["k"], limit=1)
        assert isinstance(metric, obskit.Instrument)
        first, past = metric.labels("a"), metric.labels("b")
        assert (type(first), type(past), metric.folded(past)) == (kind, kind, True)
    timed = obskit.histogram("typing_children_histogram", "Children.", ["k"], limit=1)
    assert {type(timed.labels(v)) for v in "ab"} == {Histogram}
