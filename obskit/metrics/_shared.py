"""One cardinality limit across processes, under multi-process metrics (gunicorn workers).

Each worker keeps its own label sets, and prometheus_client sums the workers' files at scrape
time: a limit counted per process would let every worker -- and every worker that replaces one
(``max_requests``, a crash) -- admit its own ``limit`` label sets, and the files of exited workers
keep theirs. So under ``PROMETHEUS_MULTIPROC_DIR`` a metric's admitted label sets are also
recorded in one file of that directory, ``obskit_labels_<metric>.txt`` (one JSON array a line;
prometheus_client reads only ``*.db`` files there), appended to under an exclusive ``flock``. A
process consults it only for a label set it has not seen yet; once the file holds ``limit``
label sets the answer is cached, as the file only grows. The file lives as long as the
directory: gunicorn deployments empty it at start, which starts every limit afresh, as the
values themselves do; a file truncated or replaced while processes run is read afresh by a
process that consults it (one that found it full does not look again), and that process records
its own label sets in it again.

A failure to use the file (a read-only or full disk, something that is not a regular file, a
lock another process holds past :data:`LOCK_WAIT` -- a worker stopped while holding it) falls
back to the per-process limit, counted in
``obskit_internal_errors_total{component="cardinality_shared"}``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO

__all__ = ["SharedLabelSets", "label_file_name"]

_SAFE = re.compile(r"[A-Za-z0-9_:]{1,150}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_:]")

#: Held from opening a label file to closing it, and across ``fork()``: a child forked while a
#: thread holds a file open would share its open file description, to which flock locks belong,
#: and hold the parent's lock for as long as it lives.
_files_lock = threading.Lock()
os.register_at_fork(
    before=_files_lock.acquire,
    after_in_parent=_files_lock.release,
    after_in_child=_files_lock.release,
)


#: Seconds a new label set waits at most for another process's hold on the file (a worker
#: stopped while it held it): past it, the per-process limit decides, and it is counted.
LOCK_WAIT = 0.25

#: Seconds the file is left alone after it could not be used: the per-process limit decides
#: meanwhile, without a wait or a failing system call for every new label set.
REST = 5.0


def _lock_within(handle: IO[bytes], seconds: float) -> None:
    """``flock(LOCK_EX)``, waiting at most ``seconds``: a request must not wait on a stuck
    process. Raises OSError (``TimeoutError``) past it."""
    deadline = time.monotonic() + seconds
    pause = 0.0005
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{handle.name}: held by another process") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.01)


def label_file_name(metric: str) -> str:
    """The file of ``metric``'s label sets: the name itself when it is short and plain, else a
    readable part and a digest (``-`` never appears in a plain name), so that no two metrics
    share a file and no name is too long for the filesystem."""
    if _SAFE.fullmatch(metric):
        return f"obskit_labels_{metric}.txt"
    digest = hashlib.sha256(metric.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"obskit_labels_{_UNSAFE.sub('_', metric)[:100]}-{digest}.txt"


class SharedLabelSets:
    """The label sets of one metric admitted by every process sharing ``directory``.

    ``own()`` gives the label sets this process has series for: they are recorded when the file
    is first used (series made before the directory was known) and again when it was replaced.
    Not thread-safe by itself: the guard calls it under its own lock.
    """

    def __init__(
        self,
        directory: str,
        metric: str,
        limit: int,
        own: Callable[[], Iterable[tuple[str, ...]]],
    ) -> None:
        self.directory = directory
        self.path = os.path.join(directory, label_file_name(metric))
        self.limit = limit
        self.known: set[tuple[str, ...]] = set()
        self.full = False
        self._own = own
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._resting_until = 0.0

    def admit(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` may have its own series: admitted before by any process, or now,
        while fewer than ``limit`` label sets are. Raises OSError when the file cannot be used."""
        if key in self.known:
            return True
        if self.full:
            return False
        if time.monotonic() < self._resting_until:
            raise OSError(f"{self.path}: unusable a moment ago")
        try:
            return self._admit(key)
        except BaseException:
            # Not again for every new label set: each would wait or fail the same way.
            self._resting_until = time.monotonic() + REST
            raise

    def _admit(self, key: tuple[str, ...]) -> bool:
        # Opened for each new label set (a cold path): nothing stays open between admissions.
        with _files_lock, open(self.path, "a+b") as handle:
            _lock_within(handle, LOCK_WAIT)  # released by the close
            self._catch_up(handle)
            if key in self.known:
                return True
            if len(self.known) >= self.limit:
                self.full = True
                return False
            self._append(handle, [key])
            self.full = len(self.known) >= self.limit
            return True

    def _catch_up(self, handle: IO[bytes]) -> None:
        """Read what other processes appended since the last read (from the start, and with
        this process's own label sets recorded again, if the file is new to it)."""
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):  # a FIFO would block, /dev/zero never end
            raise OSError(f"{self.path} is not a regular file")
        identity = (status.st_dev, status.st_ino)
        fresh = identity != self._identity or status.st_size < self._offset
        if fresh:
            self._identity = identity
            self.known.clear()
            self.full = False
            self._offset = 0
            self._partial = b""
        handle.seek(self._offset)
        data = self._partial + handle.read()
        self._offset = handle.tell()
        lines = data.split(b"\n")
        self._partial = lines.pop()  # only a torn line: writers hold the lock
        for line in lines:
            try:
                values = json.loads(line)
            except Exception:  # a torn or hostile line (a RecursionError too)
                continue
            if isinstance(values, list) and all(isinstance(v, str) for v in values):
                self.known.add(tuple(values))
        if fresh:
            # Series this process already has take their places, whatever the limit: they
            # exist, and the other processes must count them.
            self._append(handle, [key for key in self._own() if key not in self.known])
            self.full = len(self.known) >= self.limit

    def _append(self, handle: IO[bytes], keys: list[tuple[str, ...]]) -> None:
        if not keys:
            return
        data = b"".join(
            json.dumps(list(key), ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
            for key in keys
        )
        if self._partial:  # a torn last line (its writer was killed): end it first
            data = b"\n" + data
        handle.seek(0, os.SEEK_END)
        handle.write(data)
        handle.flush()
        self._partial = b""  # only once the write went through
        self._offset = handle.tell()
        self.known.update(keys)
