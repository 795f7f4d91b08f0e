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
import os, sys
import obskit
obskit.configure(service_name="full", multiproc_dir=sys.argv[1], traces_exporter="none")
jobs = obskit.counter("jobs", "Jobs.")  # no labels: its value is made with the metric
jobs.inc()
orders = obskit.counter("orders_completed", "Orders.", ["payment_method"])
orders.labels("card").inc()
child = os.fork()  # a gunicorn --preload worker: every value is made again for its pid
if child == 0:
    jobs.inc()
    orders.labels("card").inc()
    os._exit(0 if jobs._metric._value.get() == 1.0 else 3)
assert 0 == os.waitpid(child, 0)[1]
print("survived", jobs._metric._value.get())
"""

#: The directory fills up while the process runs: room for the first values, not for all.
FILLING = """
import sys
import obskit
obskit.configure(service_name="full", multiproc_dir=sys.argv[1], traces_exporter="none")
orders = obskit.counter("orders_completed", "Orders.", ["payment_method"], limit=5000)
for n in range(3000):
    orders.labels(f"method-{n}").inc(n)
print("survived", orders.labels("method-7")._value.get(),
      orders.labels("method-2999")._value.get())
"""


#: What a scrape shows once the directory is full: a live gauge made before still moves, and
#: a histogram child made after is whole or absent, never without its +Inf bucket.
SCRAPED = """
import sys
import obskit
from obskit.metrics.exposition import render
from prometheus_client.openmetrics.parser import text_string_to_metric_families
obskit.configure(service_name="full", multiproc_dir=sys.argv[1], traces_exporter="none")
busy = obskit.gauge("busy", "In flight.", ["route"], multiprocess_mode="livesum")
busy.labels("/slow").inc()
orders = obskit.counter("orders_completed", "Orders.", ["payment_method"], limit=5000)
latency = obskit.histogram("lat_seconds", "Latency.", ["route"], limit=5000)
for n in range(3000):  # the disk fills up on the way, between two values of a child or not
    orders.labels(f"method-{n}").inc()
    latency.labels(f"/r{n}").observe(0.1)
busy.labels("/slow").dec()
body, kind = render("application/openmetrics-text")
families = {f.name: f for f in text_string_to_metric_families(body.decode())}
(slow,) = [s.value for s in families["busy"].samples if s.labels.get("route") == "/slow"]
print("parsed", slow)
"""


#: A ``gunicorn --preload`` worker forked when the directory is all but full: its first write
#: makes every value again in files of its own pid, where the disk fills half-way through.
FORKED = """
import os, sys
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
import obskit
directory, free_pages = sys.argv[1], int(sys.argv[2])
obskit.configure(service_name="full", multiproc_dir=directory, traces_exporter="none")
jobs = [obskit.histogram(f"job{n}_seconds", "Job time.") for n in range(12)]
for job in jobs:
    job.observe(0.2)
ticks = obskit.counter("ticks", "Ticks.")
filler = os.path.join(os.path.dirname(directory), "more")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
os.close(fd)
os.truncate(filler, os.path.getsize(filler) - free_pages * 4096)
child = os.fork()
if child == 0:
    ticks.inc()
    for job in jobs:
        job.observe(0.2)
    os._exit(0)
assert 0 == os.waitpid(child, 0)[1]
for name in os.listdir(directory):  # the worker's files alone: the parent's have every series
    if name.endswith(f"_{os.getpid()}.db"):
        os.remove(os.path.join(directory, name))
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, directory)
list(text_string_to_metric_families(generate_latest(registry).decode()))
print("parsed")
"""


#: A log handler of the application's that counts its records in a metric, while the disk
#: fills up: the warning about it must not be logged under prometheus_client's lock.
COUNTING_HANDLER = """
import faulthandler, logging, sys
faulthandler.dump_traceback_later(30, exit=True)
import obskit
obskit.configure(service_name="full", multiproc_dir=sys.argv[1], traces_exporter="none")
records = obskit.counter("log_records", "Records.")

class Counting(logging.Handler):
    def emit(self, record):
        records.inc()

logging.getLogger().addHandler(Counting())
latency = obskit.histogram("lat_seconds", "Latency.", ["route"], limit=5000)
for n in range(3000):
    latency.labels(f"/r{n}").observe(0.1)
print("done")
"""

#: A counter whose own label is called ``le``: not a histogram bucket's.
LE_LABEL = """
import os, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
import obskit
directory = sys.argv[1]
obskit.configure(service_name="full", multiproc_dir=directory, traces_exporter="none")
hits = obskit.counter("cache_hits", "Hits.", ["le"])
hits.labels("small").inc()
orders = obskit.counter("orders", "Orders.", ["kind"])
orders.labels("web").inc(7)
fd = os.open(os.path.join(os.path.dirname(directory), "more"), os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
for n in range(200):  # series of their own, in memory once the page is full: the rest stays
    hits.labels(f"large-{n}").inc()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, directory)
print(sorted(line for line in generate_latest(registry).decode().splitlines()
             if line.startswith(("cache_hits_total", "orders_total"))))
"""


def _in_full_tmpfs(
    tmp_path: Path, script: str, filler_blocks: int = 1000, arguments: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with a multi-process directory on a 256 KiB tmpfs that a filler of
    ``filler_blocks`` 4 KiB blocks fills (all of it by default)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a tmpfs of the test's own")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    (tmp_path / "child.py").write_text(script)
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {mount} || exit 77; "
        f"dd if=/dev/zero of={mount}/filler bs=4k count={filler_blocks} 2>/dev/null; "
        f"mkdir {mount}/prom && exec {sys.executable} {tmp_path}/child.py {mount}/prom "
        + " ".join(arguments)
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
    # The values go on in the process's memory, in a forked child too.
    assert (0, "survived 1.0\n") == (done.returncode, done.stdout), done.stderr[-2000:]
    assert "No space left on device" in done.stderr


def test_a_multiprocess_directory_that_fills_up_leaves_the_values_counting(
    tmp_path: Path,
) -> None:
    """Values written to the file before it could not grow keep theirs; later ones count in
    memory; nothing is raised."""
    done = _in_full_tmpfs(tmp_path, FILLING, filler_blocks=40)
    assert (0, "survived 7.0 2999.0\n") == (done.returncode, done.stdout), done.stderr[-2000:]
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


# Two bugs this test found, since fixed (a review of the fix above): the first version moved a
# whole file to memory once it was full -- its in-flight gauge stayed at 1 in every scrape --
# and a histogram child cut off between two values left buckets without +Inf in the file, which
# the OpenMetrics parser (and histogram_quantile) refuse
def test_a_full_directory_leaves_the_scrape_true_and_parseable(tmp_path: Path) -> None:
    done = _in_full_tmpfs(tmp_path, SCRAPED, filler_blocks=40)
    assert (0, "parsed 0.0\n") == (done.returncode, done.stdout), done.stderr[-2000:]
    assert "No space left on device" in done.stderr


# A bug this test found, since fixed (a review of the fix above): the values a forked worker
# makes again for its own pid were not made as one series at a time: a histogram cut off by the
# full disk left buckets without +Inf in the file
@pytest.mark.parametrize("free_pages", [1, 2, 3])
def test_a_worker_forked_onto_a_full_directory_leaves_every_series_whole(
    tmp_path: Path, free_pages: int
) -> None:
    done = _in_full_tmpfs(tmp_path, FORKED, filler_blocks=0, arguments=(str(free_pages),))
    assert (0, "parsed\n") == (done.returncode, done.stdout), done.stderr[-2000:]


# Two bugs this test found, since fixed (a review of the fix above): the warning was logged under
# prometheus_client's lock, so a handler counting its records in a metric hung the process; and
# a counter's own label called le was taken for a histogram bucket's, which moved its other
# series (and everything after them) out of the scrape
def test_a_log_handler_that_counts_in_a_metric_does_not_hang_on_a_full_directory(
    tmp_path: Path,
) -> None:
    done = _in_full_tmpfs(tmp_path, COUNTING_HANDLER, filler_blocks=40)
    assert (0, "done\n") == (done.returncode, done.stdout), done.stderr[-2000:]


def test_a_counters_own_le_label_is_not_a_bucket(tmp_path: Path) -> None:
    done = _in_full_tmpfs(tmp_path, LE_LABEL, filler_blocks=0)
    assert 0 == done.returncode, done.stderr[-2000:]
    # le="large" is in the file when its entry fits the page already allocated, else in memory.
    assert 'cache_hits_total{le="small"} 1.0' in done.stdout
    assert 'orders_total{kind="web"} 7.0' in done.stdout
