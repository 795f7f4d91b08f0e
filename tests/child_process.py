"""The environment of a child Python process a test starts (a server, a script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the ``OTEL_*``/``OBSKIT_*``, proxy and multi-process
    settings of the machine running the tests, with the repository importable, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("OTEL_", "OBSKIT_"))
        and not k.upper().endswith("_PROXY")
        and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_python(script: str, timeout: float = 60.0, cwd: Path | None = None) -> str:
    """Run ``script`` in a fresh interpreter (:func:`child_env`, in ``cwd``); its output. Fails
    the test, with the end of its stderr, if it did not exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_env(),
        check=False,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    return done.stdout
