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
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import mmap_dict, values

__all__ = ["allocate_before_mapping", "one_child"]

#: What a filesystem that cannot allocate ahead answers: its files are used as before.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _allocate(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise


class AllocatedMmapedDict(mmap_dict.MmapedDict):
    """prometheus_client's ``MmapedDict``, the blocks it is about to write through the map
    allocated first -- only those: the file keeps its holes (a tmpfs charges written pages
    only, and dead workers' files stay in the directory). Once a new value cannot be given room
    in the file, new values are kept in memory; those in the file go on there."""

    #: New values go to memory: the file could not be made, or could not grow.
    _full = False
    #: A descriptor of the file without O_APPEND: glibc's fallback for filesystems that cannot
    #: allocate ahead (NFSv3, FUSE) writes zeros through it, and refuses an O_APPEND one.
    _alloc_fd = -1

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        self._side = bytearray()
        self._side_positions: dict[str, int] = {}
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
            file = self.__dict__.get("_f")
            if file is not None:
                file.close()
            self._close_alloc_fd()
            self._fname = filename
            self._f = None  # type: ignore[assignment]
            self._positions: dict[str, int] = {}
            self._fill_up(exc)

    def _init_value(self, key: str) -> Any:
        if not self._full:
            # The entry as prometheus_client packs it at the end of what is used: its length,
            # the key padded to 8 bytes, two doubles.
            encoded = len(key.encode("utf-8"))
            used = self._used
            try:
                _allocate(self._alloc_fd, used, 4 + encoded + (8 - (encoded + 4) % 8) + 16)
            except OSError as exc:
                self._fill_up(exc)
            else:
                made = _making.__dict__.get("made")
                if made is not None:  # a child being made: these keys stand or fall together
                    made.setdefault(self, used)
                return super()._init_value(key)  # type: ignore[no-untyped-call]
        self._side_positions[key] = len(self._side)
        self._side.extend(bytes(16))
        return None

    def read_value(self, key: str) -> Any:
        if key not in self._positions and key not in self._side_positions:
            self._init_value(key)
        pos = self._positions.get(key)
        if pos is not None:
            return mmap_dict._unpack_two_doubles(self._m, pos)
        return mmap_dict._unpack_two_doubles(self._side, self._side_positions[key])

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        if key not in self._positions and key not in self._side_positions:
            self._init_value(key)
        pos = self._positions.get(key)
        if pos is not None:
            mmap_dict._pack_two_doubles(self._m, pos, value, timestamp)  # type: ignore[no-untyped-call]
        else:
            data, pos = self._side, self._side_positions[key]
            mmap_dict._pack_two_doubles(data, pos, value, timestamp)  # type: ignore[no-untyped-call]

    def _fill_up(self, exc: OSError) -> None:
        self._full = True
        if "made" in _making.__dict__:
            _making.failed = True
        from obskit import _selfmetrics

        _selfmetrics.warn_once(
            f"multiprocess_memory:{os.path.dirname(self._fname)}",
            "obskit: a multi-process metrics file cannot take new values (%s: %s); values this "
            "process makes from now on are kept in its memory, where no scrape sees them, and "
            "lost when it exits (free space, or restart the worker)",
            self._fname,
            exc.strerror or exc,
        )

    def _to_memory(self, used: int) -> None:
        """Move the values written from ``used`` on from the file to memory: the rest of their
        child could not be written there (a histogram without its ``+Inf`` bucket would spoil
        every scrape)."""
        # Every key from ``used`` on: another thread's child may have come in between.
        for key, pos in [(k, p) for k, p in self._positions.items() if p >= used]:
            del self._positions[key]
            self._side_positions[key] = len(self._side)
            self._side.extend(self._m[pos : pos + 16])
        self._used = used
        mmap_dict._pack_integer(self._m, 0, used)  # type: ignore[no-untyped-call]

    def _close_alloc_fd(self) -> None:
        if self._alloc_fd >= 0:
            try:
                os.close(self._alloc_fd)
            finally:
                self._alloc_fd = -1

    def close(self) -> None:
        self._close_alloc_fd()
        super().close()  # type: ignore[no-untyped-call]


#: The child being made on this thread (see :func:`one_child`).
_making = threading.local()


@contextmanager
def one_child() -> Iterator[None]:
    """Make a metric's child (its values) as one: if any of its values cannot be given room in
    a multi-process file, those already written there move to memory with the rest."""
    state = _making.__dict__
    if "made" in state:  # inside another child's making: that one decides
        yield
        return
    made: dict[AllocatedMmapedDict, int] = {}  # each file: where this child's values begin
    state["made"] = made
    state["failed"] = False
    try:
        yield
    finally:
        del state["made"]
        if state.pop("failed"):
            for values_file, used in made.items():
                try:
                    values_file._to_memory(used)
                except Exception:  # pragma: no cover - a file closed meanwhile (a fork)
                    pass


def allocate_before_mapping() -> None:
    """Make prometheus_client's multi-process values use :class:`AllocatedMmapedDict`, where
    its internals are as this module knows them."""
    known = (
        isinstance(getattr(mmap_dict, "_INITIAL_MMAP_SIZE", None), int)
        and callable(getattr(mmap_dict, "_pack_integer", None))
        and callable(getattr(mmap_dict, "_pack_two_doubles", None))
        and callable(getattr(mmap_dict, "_unpack_two_doubles", None))
        and callable(getattr(mmap_dict.MmapedDict, "_init_value", None))
    )
    # values.MultiProcessValue looks the class up in its module each time it opens a file.
    if known and getattr(values, "MmapedDict", None) is mmap_dict.MmapedDict:
        values.MmapedDict = AllocatedMmapedDict  # type: ignore[attr-defined]
