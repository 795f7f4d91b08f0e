"""The environment of a child Python process a test starts (a server, a script)."""

from __future__ import annotations

import os
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
