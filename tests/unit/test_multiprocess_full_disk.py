"""Multi-process metrics on a full filesystem: the process lives, the metric records nothing.

A size-limited tmpfs (a Kubernetes ``emptyDir`` with ``medium: Memory``, Docker's ``/dev/shm``)
fills up with dead workers' files. prometheus_client maps its ``.db`` files with holes and the
first write to such a page killed the process with SIGBUS (every gunicorn worker, at boot, again
and again); obskit allocates the blocks first (obskit/metrics/_mmap.py). The tmpfs is mounted in
a mount namespace of the test's own (``unshare -m``), so nothing outlives the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.child_process import child_env

CHILD = """
import sys
import obskit
obskit.configure(service_name="full", multiproc_dir=sys.argv[1], traces_exporter="none")
orders = obskit.counter("orders_completed", "Orders.", ["payment_method"])
orders.labels("card").inc()
print("survived")
"""


def _in_full_tmpfs(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with a multi-process directory on a 256 KiB tmpfs that is already full."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a tmpfs of the test's own")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    (tmp_path / "child.py").write_text(script)
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {mount} || exit 77; "
        f"dd if=/dev/zero of={mount}/filler bs=4k count=1000 2>/dev/null; "
        f"mkdir {mount}/prom && exec {sys.executable} {tmp_path}/child.py {mount}/prom"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    if done.returncode == 77 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[-200:]}")
    return done


# A bug this test found, since fixed (a review of 2026-11-25): the process died of SIGBUS
# (exit 135) at its first metric; under gunicorn every worker died at boot, endlessly
def test_a_full_multiprocess_directory_leaves_the_process_alive(tmp_path: Path) -> None:
    done = _in_full_tmpfs(tmp_path, CHILD)
    assert (0, "survived\n") == (done.returncode, done.stdout), done.stderr[-2000:]
    assert "No space left on device" in done.stderr


def test_the_files_keep_their_holes(tmp_path: Path) -> None:
    """Only the blocks written are allocated: a dead worker's files (which stay in the
    directory) cost a tmpfs what they hold, not their 64 KiB each."""
    from tests.child_process import run_python

    directory = tmp_path / "prom"
    run_python(
        "import obskit\n"
        f"obskit.configure(service_name='holes', multiproc_dir={str(directory)!r},"
        " traces_exporter='none')\n"
        "orders = obskit.counter('orders_completed', 'Orders.', ['payment_method'])\n"
        "for n in range(20):\n"
        "    orders.labels(f'method-{n}').inc()\n"
    )
    (counters,) = directory.glob("counter_*.db")
    assert 65536 == counters.stat().st_size
    assert counters.stat().st_blocks * 512 <= 16384
