"""The Python examples in ``docs/`` run as they are written.

Each page's ````python`` blocks run in order in one fresh interpreter -- a later block may use
what an earlier one defined, as a reader following the page would -- in a temporary directory.
A block that is only a piece of a larger program (a settings module, a line inside an app) has
``<!-- fragment -->`` on the line before its opening fence and is not run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^(<!-- fragment -->\n)?```python\n(.*?)^```", re.S | re.M)

# Runs the blocks given on stdin ([[line, code], ...]) in one namespace; names the failing one.
_DRIVER = """
import json, sys, traceback
page, blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for line, code in blocks:
    try:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)
    except BaseException:
        print(f"the example at {page}:{line} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def _blocks(page: Path) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each block that is not a fragment."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(2)), match.group(2))
        for match in _BLOCK.finditer(text)
        if match.group(1) is None
    ]


PAGES = sorted(page for page in DOCS.glob("*.md") if _blocks(page))


def test_every_page_with_python_examples_is_run() -> None:
    """The pages with examples are found (a renamed folder must not make this test vacuous)."""
    assert {"logging.md", "metrics.md", "use.md"} <= {page.name for page in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_examples_run(page: Path, tmp_path: Path) -> None:
    # The page's examples configure obskit themselves: nothing of the test run's settings.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "OBSKIT_", "PROMETHEUS_MULTIPROC"))
    }
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps([f"docs/{page.name}", _blocks(page)]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr[-4000:]
