"""A forked child must not inherit a lock that another thread of its parent held at the fork.

Findings of a read-through review of the metrics (2026-11-25): a process that forks (a preloaded
gunicorn master, ``multiprocessing`` with fork) while one of its threads was inside a USE
tracker, a pool's checkout hook or a multi-process metric write gave a child that hung for good
at its first use of that tracker or metric -- or before running any code of its own, in
obskit's own fork hook. Each scenario runs in a child interpreter (multi-process mode is
process-global), which forks while a thread holds the lock, and reports whether its own child
finished.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.child_process import child_env

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile, threading

    import obskit
    from obskit.metrics.use import use

    scenario = sys.argv[1]
    options = {"service_name": "t", "traces_exporter": "none"}
    if scenario != "tracker":
        options["multiproc_dir"] = tempfile.mkdtemp()
    obskit.configure(**options)
    tracker = use("forked", capacity=4)
    jobs = obskit.counter("jobs", "Jobs.", ["kind"])
    jobs.labels("a").inc()
    with tracker:
        pass

    if scenario == "multiprocess_value":
        from prometheus_client import values

        # The one lock every multi-process value shares, a variable of their class's closure.
        cells = values.ValueClass.inc.__closure__
        held = next(c.cell_contents for c in cells if hasattr(c.cell_contents, "acquire"))
    else:
        held = tracker._lock

    holding, release = threading.Event(), threading.Event()

    def hold():
        with held:  # as another thread inside `with tracker:` or writing a value is
            holding.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    pid = os.fork()
    if pid == 0:
        import signal

        signal.alarm(5)  # a child that hangs is killed, and says so by its status
        with tracker:
            jobs.labels("a").inc()
        os._exit(0)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.parametrize("scenario", ["tracker", "tracker_multiprocess", "multiprocess_value"])
def test_a_child_forked_while_a_thread_holds_a_metric_lock_runs(scenario: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, scenario],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "child exit 0" == done.stdout.strip(), done.stderr[-2000:]
