"""prometheus_client's multi-process files, with their blocks allocated before they are mapped.

prometheus_client sizes each worker's ``.db`` file with ``truncate`` (a hole) and writes its
values through ``mmap``. On a full filesystem -- a size-limited tmpfs (a Kubernetes ``emptyDir``
with ``medium: Memory``, Docker's ``/dev/shm``) filled by dead workers' files -- the first write
to such a page kills the process with SIGBUS, which no ``except`` can catch: every gunicorn worker
died at boot, again and again. Here the blocks about to be written are allocated first
(``posix_fallocate``), so a full disk is an ``OSError``; the file's values then go on in the
process's memory (counted there, not in the directory's scrapes until the worker restarts),
with one warning -- never an error into the application's call.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from typing import Any

from prometheus_client import mmap_dict, values

__all__ = ["allocate_before_mapping"]

_pack_two_doubles = struct.Struct(b"dd").pack  # the file's layout for a value: value, timestamp
_unpack_two_doubles = struct.Struct(b"dd").unpack_from

#: What a filesystem that cannot allocate ahead answers: its files are used as before.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _allocate(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise


def _series(key: str) -> tuple[str, str]:
    """The series a value's key belongs to: its metric and labels, ``le`` left out (a
    histogram's buckets, sum and count are one series)."""
    try:
        metric, sample, labels, _ = json.loads(key)
        if sample == metric + "_bucket":  # a counter's own label may be called le too
            labels.pop("le", None)
        return metric, json.dumps(labels, sort_keys=True)
    except Exception:  # not as prometheus_client writes keys: a series of its own
        return key, ""


def _key_bytes(key: str) -> int:
    """The bytes of an entry before its value, as prometheus_client packs it: the key's length,
    the key padded to 8 bytes."""
    encoded = len(key.encode("utf-8"))
    return 4 + encoded + (8 - (encoded + 4) % 8)


def _entry_start(key: str, pos: int) -> int:
    """Where the entry whose value is at ``pos`` begins."""
    return pos - _key_bytes(key)


def _warn_full(filename: str, why: str) -> None:
    from obskit import _selfmetrics

    _selfmetrics.warn_once(
        f"multiprocess_memory:{os.path.dirname(filename)}",
        "obskit: a multi-process metrics file cannot take new values (%s: %s); values this "
        "process makes from now on are kept in its memory, where no scrape sees them, and "
        "lost when it exits (free space, or restart the worker)",
        filename,
        why,
    )


class AllocatedMmapedDict(mmap_dict.MmapedDict):
    """prometheus_client's ``MmapedDict``, the blocks it is about to write through the map
    allocated first -- only those: the file keeps its holes (a tmpfs charges written pages
    only, and dead workers' files stay in the directory).

    Once a new value cannot be given room in the file, new values are kept in memory, where no
    scrape sees them; those in the file go on there -- but a series is never left half in the
    file (a histogram without its ``+Inf`` bucket spoils every scrape): the file's entries from
    that series' first one on move to memory with it, and from any series they cut in two.
    """

    #: New values go to memory: the file could not be made, or could not grow.
    _full = False
    #: A descriptor of the file without O_APPEND: glibc's fallback for filesystems that cannot
    #: allocate ahead (NFSv3, FUSE) writes zeros through it, and refuses an O_APPEND one.
    _alloc_fd = -1

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        self._side = bytearray()
        self._side_positions: dict[str, int] = {}
        #: The series with values in the file, once it is full (see _to_memory).
        self._file_series: set[tuple[str, str]] = set()
        self._starts: dict[str, tuple[int, tuple[str, str]]] = {}
        if read_mode:
            super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]
            return
        try:
            self._alloc_fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o666)
            if os.fstat(self._alloc_fd).st_size == 0:  # sized as prometheus_client sizes it
                os.ftruncate(self._alloc_fd, mmap_dict._INITIAL_MMAP_SIZE)
            # The header prometheus_client reads and writes at once: also when an earlier
            # attempt made the file but could not allocate it.
            _allocate(self._alloc_fd, 0, 8)
            super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]
        except OSError as exc:
            for name in ("_m", "_f"):
                opened = self.__dict__.get(name)
                if opened is not None:
                    opened.close()
            self._close_alloc_fd()
            self._fname = filename
            self._f = None  # type: ignore[assignment]
            self._positions: dict[str, int] = {}
            self._fill_up(exc)

    def _init_value(self, key: str) -> Any:
        if not self._full:
            try:  # the entry, at the end of what is used: its key, then two doubles
                _allocate(self._alloc_fd, self._used, _key_bytes(key) + 16)
            except OSError as exc:
                self._fill_up(exc)
                # Parsed once: where each entry of the file begins, and its series.
                self._starts = {
                    k: (_entry_start(k, p), _series(k)) for k, p in self._positions.items()
                }
                self._file_series = {of for _, of in self._starts.values()}
            else:
                return super()._init_value(key)  # type: ignore[no-untyped-call]
        series = _series(key)
        if series in self._file_series:
            try:
                self._to_memory(series)
            except Exception:  # pragma: no cover - keys unlike prometheus_client's
                self._file_series.discard(series)
        self._side_positions[key] = len(self._side)
        self._side.extend(bytes(16))
        return None

    def read_value(self, key: str) -> Any:
        pos = self._positions.get(key)
        if pos is not None:
            return _unpack_two_doubles(self._m, pos)
        if key not in self._side_positions:
            self._init_value(key)
            return self.read_value(key)
        return _unpack_two_doubles(self._side, self._side_positions[key])

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        pos = self._positions.get(key)
        if pos is not None:
            self._m[pos : pos + 16] = _pack_two_doubles(value, timestamp)
            return
        if key not in self._side_positions:
            self._init_value(key)
            self.write_value(key, value, timestamp)
            return
        pos = self._side_positions[key]
        self._side[pos : pos + 16] = _pack_two_doubles(value, timestamp)

    def _fill_up(self, exc: OSError) -> None:
        self._full = True
        # Not logged here: prometheus_client holds its values' lock (not reentrant) around
        # every call of this class, and a log handler that counts its records in a metric would
        # wait for it forever. A thread of its own logs it as soon as the lock is free.
        threading.Thread(
            target=_warn_full,
            args=(self._fname, exc.strerror or str(exc)),
            name="obskit-multiprocess-warning",
        ).start()

    def _to_memory(self, series: tuple[str, str]) -> None:
        """Move ``series``'s values in the file to memory, with every entry after its first
        one, and so on for each series those entries belong to (their values come in any order:
        several threads make series at once, a forked worker makes them all again): then every
        series is wholly in the file or wholly in memory."""
        starts = self._starts
        first = min(start for start, of in starts.values() if of == series)
        while True:
            moved = {of for start, of in starts.values() if start >= first}
            earliest = min(start for start, of in starts.values() if of in moved)
            if earliest >= first:
                break
            first = earliest
        for key, (start, of) in list(starts.items()):
            if start >= first:
                del starts[key]
                pos = self._positions.pop(key)
                self._side_positions[key] = len(self._side)
                self._side.extend(self._m[pos : pos + 16])
                self._file_series.discard(of)
        self._used = first
        mmap_dict._pack_integer(self._m, 0, first)  # type: ignore[no-untyped-call]

    def _close_alloc_fd(self) -> None:
        if self._alloc_fd >= 0:
            try:
                os.close(self._alloc_fd)
            finally:
                self._alloc_fd = -1

    def close(self) -> None:
        self._close_alloc_fd()
        super().close()  # type: ignore[no-untyped-call]


def allocate_before_mapping() -> None:
    """Make prometheus_client's multi-process values use :class:`AllocatedMmapedDict`, where
    its internals are as this module knows them."""
    known = (
        isinstance(getattr(mmap_dict, "_INITIAL_MMAP_SIZE", None), int)
        and callable(getattr(mmap_dict, "_pack_integer", None))
        and callable(getattr(mmap_dict.MmapedDict, "_init_value", None))
    )
    # values.MultiProcessValue looks the class up in its module each time it opens a file.
    if known and getattr(values, "MmapedDict", None) is mmap_dict.MmapedDict:
        values.MmapedDict = AllocatedMmapedDict  # type: ignore[attr-defined]
