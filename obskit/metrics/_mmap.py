"""prometheus_client's multi-process files, with their blocks allocated before they are mapped.

prometheus_client sizes each worker's ``.db`` file with ``truncate`` (a hole) and writes its
values through ``mmap``. On a full filesystem -- a size-limited tmpfs (a Kubernetes ``emptyDir``
with ``medium: Memory``, Docker's ``/dev/shm``) filled by dead workers' files -- the first write
to such a page kills the process with SIGBUS, which no ``except`` can catch: every gunicorn worker
died at boot, again and again. Allocating the blocks first (``posix_fallocate``) turns that into
an ``OSError`` (ENOSPC) when the file is made or grown, which obskit's instruments survive (the
metric records nothing in that process, with one warning).
"""

from __future__ import annotations

import errno
import os
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
    only, and dead workers' files stay in the directory)."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            with open(filename, "a+b") as file:  # made as prometheus_client makes it
                if os.fstat(file.fileno()).st_size == 0:
                    file.truncate(mmap_dict._INITIAL_MMAP_SIZE)
                # The header prometheus_client reads and writes at once: also when an earlier
                # attempt made the file but could not allocate it.
                _allocate(file.fileno(), 0, 8)
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> Any:
        # The entry as prometheus_client packs it at the end of what is used: its length, the
        # key padded to 8 bytes, two doubles.
        encoded = len(key.encode("utf-8"))
        _allocate(self._f.fileno(), self._used, 4 + encoded + (8 - (encoded + 4) % 8) + 16)
        return super()._init_value(key)  # type: ignore[no-untyped-call]


def allocate_before_mapping() -> None:
    """Make prometheus_client's multi-process values use :class:`AllocatedMmapedDict`."""
    # values.MultiProcessValue looks the class up in its module each time it opens a file.
    if getattr(values, "MmapedDict", None) is mmap_dict.MmapedDict:
        values.MmapedDict = AllocatedMmapedDict  # type: ignore[attr-defined]
