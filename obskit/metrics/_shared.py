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
values themselves do.

A failure to use the file (a read-only or full disk) falls back to the per-process limit,
counted in ``obskit_internal_errors_total{component="cardinality_shared"}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from typing import IO

__all__ = ["SharedLabelSets"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_:]")


class SharedLabelSets:
    """The label sets of one metric admitted by every process sharing ``directory``.

    Not thread-safe by itself: the guard calls it under its own lock.
    """

    def __init__(self, directory: str, metric: str, limit: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"obskit_labels_{_UNSAFE.sub('_', metric)}.txt")
        self.limit = limit
        self.known: set[tuple[str, ...]] = set()
        self.full = False
        self._offset = 0
        self._partial = b""

    def admit(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` may have its own series: admitted before by any process, or now,
        while fewer than ``limit`` label sets are. Raises OSError when the file cannot be used."""
        if key in self.known:
            return True
        if self.full:
            return False
        # Opened for each new label set (a cold path): nothing stays open, and a forked child
        # cannot share its parent's open file description, to which flock locks belong.
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released by the close
            self._catch_up(handle)
            if key in self.known:
                return True
            if len(self.known) >= self.limit:
                self.full = True
                return False
            line = json.dumps(list(key), ensure_ascii=True, separators=(",", ":")).encode()
            if self._partial:  # a torn last line (its writer was killed): end it first
                line = b"\n" + line
                self._partial = b""
            handle.seek(0, os.SEEK_END)
            handle.write(line + b"\n")
            handle.flush()
            self._offset = handle.tell()
            self.known.add(key)
            self.full = len(self.known) >= self.limit
            return True

    def _catch_up(self, handle: IO[bytes]) -> None:
        """Read what other processes appended since the last read."""
        handle.seek(self._offset)
        data = self._partial + handle.read()
        self._offset = handle.tell()
        lines = data.split(b"\n")
        self._partial = lines.pop()  # only a torn line: writers hold the lock
        for line in lines:
            try:
                values = json.loads(line)
            except ValueError:
                continue  # a torn line from a process killed mid-write: skipped
            if isinstance(values, list) and all(isinstance(v, str) for v in values):
                self.known.add(tuple(values))
