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
import struct
from typing import Any

from prometheus_client import mmap_dict, values

__all__ = ["allocate_before_mapping"]

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
    only, and dead workers' files stay in the directory). When they cannot be, the values go on
    in memory."""

    _detached = False
    #: A descriptor of the file without O_APPEND: glibc's fallback for filesystems that cannot
    #: allocate ahead (NFSv3, FUSE) writes zeros through it, and refuses an O_APPEND one.
    _alloc_fd = -1

    def __init__(self, filename: str, read_mode: bool = False) -> None:
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
            self._fname = filename
            self._capacity = mmap_dict._INITIAL_MMAP_SIZE
            self._used = 0
            self._positions: dict[str, int] = {}
            self._detach(exc)

    def _init_value(self, key: str) -> Any:
        if not self._detached:
            # The entry as prometheus_client packs it at the end of what is used: its length,
            # the key padded to 8 bytes, two doubles.
            encoded = len(key.encode("utf-8"))
            try:
                _allocate(self._alloc_fd, self._used, 4 + encoded + (8 - (encoded + 4) % 8) + 16)
            except OSError as exc:
                self._detach(exc)
            else:
                return super()._init_value(key)  # type: ignore[no-untyped-call]
        # In memory, packed as prometheus_client packs it into the file.
        encoded_key = key.encode("utf-8")
        padded = encoded_key + (b" " * (8 - (len(encoded_key) + 4) % 8))
        value = struct.pack(f"i{len(padded)}sdd".encode(), len(encoded_key), padded, 0.0, 0.0)
        data: Any = self._m
        while self._used + len(value) > len(data):
            data.extend(bytes(len(data)))
        self._capacity = len(data)
        data[self._used : self._used + len(value)] = value
        self._used += len(value)
        mmap_dict._pack_integer(data, 0, self._used)  # type: ignore[no-untyped-call]
        self._positions[key] = self._used - 16
        return None

    def _detach(self, exc: OSError) -> None:
        """Go on in memory from what the file holds: a full disk, or a file that cannot be
        made. The file keeps the values written so far; the scrapes show those."""
        mapped = self.__dict__.get("_m")
        data = bytearray(self._capacity)
        if mapped is not None:
            data[: self._used] = mapped[: self._used]
            try:
                mapped.close()
            except Exception:  # pragma: no cover - a map still exported to a memoryview
                pass
        file = self.__dict__.get("_f")
        if file is not None:
            file.close()
        self._f = None  # type: ignore[assignment]
        self._close_alloc_fd()
        if self._used < 8:
            self._used = 8
        mmap_dict._pack_integer(data, 0, self._used)  # type: ignore[no-untyped-call]
        self._m = data  # type: ignore[assignment]
        self._detached = True
        from obskit import _selfmetrics

        _selfmetrics.warn_once(
            f"multiprocess_memory:{os.path.dirname(self._fname)}",
            "obskit: a multi-process metrics file cannot be written (%s: %s); this process's "
            "new values of it are kept in memory, where scrapes of the directory do not see them, "
            "until it restarts",
            self._fname,
            exc.strerror or exc,
        )

    def _close_alloc_fd(self) -> None:
        if self._alloc_fd >= 0:
            try:
                os.close(self._alloc_fd)
            finally:
                self._alloc_fd = -1

    def close(self) -> None:
        self._close_alloc_fd()
        if self._detached:
            self._m = None  # type: ignore[assignment]
            return
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
