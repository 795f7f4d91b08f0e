"""``benchmarks/bench_ab.py`` pairs this tree's servers with a base revision's, round by round.

Its verdict is the median of per-round ratios, so a round where either side has no figure (no
CPU time could be read) must drop out rather than skew the pairs, and the servers it starts must
import the tree they were started from.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("bench_ab")


def test_paired_ratios_skip_rounds_without_both_figures(bench: ModuleType) -> None:
    assert "1.100 (1.000-1.200)" == bench.paired([11.0, None, 12.0], [11.0, 5.0, 10.0])
    assert "-" == bench.paired([None], [1.0])
    assert "-" == bench.paired([1.0], [0.0])


def test_a_server_imports_the_tree_it_is_started_from(tmp_path: Path) -> None:
    # The base revision's server must run the base revision's obskit, not the installed one.
    fake = tmp_path / "obskit"
    fake.mkdir()
    (fake / "__init__.py").write_text("WHERE = 'base tree'\n")
    out = subprocess.run(
        [sys.executable, "-c", "import obskit; print(obskit.WHERE)"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "base tree" == out.stdout.strip()
