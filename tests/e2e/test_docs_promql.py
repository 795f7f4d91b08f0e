"""Every PromQL query and alert rule the docs give parses: ``promtool check rules`` reads them
from a rules file made of the README's and ``docs/*.md``'s ``promql`` blocks (one query per
line that starts at the block's indentation, continuation lines indented further, ``#``
comments dropped) and ``yaml`` blocks of alert rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_prometheus_server import require_prometheus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^( *)```(promql|yaml)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def _queries(block: str, indent: int) -> list[str]:
    queries: list[str] = []
    for raw in block.splitlines():
        line = raw[indent:].split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line[0] == " " and queries:
            queries[-1] += " " + line.strip()
        else:
            queries.append(line)
    return queries


def _documented() -> tuple[list[str], list[str]]:
    """``(queries, alert rule blocks)`` of every page, each named by its page."""
    queries: list[str] = []
    alerts: list[str] = []
    for page in PAGES:
        for indent, kind, block in _BLOCK.findall(page.read_text()):
            if kind == "promql":
                queries += _queries(block, len(indent))
            elif "- alert:" in block:
                alerts.append("\n".join(line[len(indent) :] for line in block.splitlines()))
    return queries, alerts


def test_the_docs_give_queries_and_alerts() -> None:
    queries, alerts = _documented()
    assert len(queries) >= 8
    assert any("http_requests_total" in query for query in queries)
    assert any("histogram_quantile" in query for query in queries)
    assert alerts


def test_every_documented_query_and_alert_parses(tmp_path: Path) -> None:
    require_prometheus()
    queries, alerts = _documented()
    rules = ["groups:", "  - name: docs", "    rules:"]
    for index, query in enumerate(queries):
        rules += [f"      - record: docs:query_{index}", f"        expr: '{query}'"]
    for block in alerts:
        rules += ["      " + line for line in block.splitlines()]
    path = tmp_path / "docs-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr + path.read_text()
    assert (
        f"SUCCESS: {len(queries) + sum(b.count('- alert:') for b in alerts)} rules" in done.stdout
    )
