"""Put the stdlib's logging back as a test found it: tests install handlers, levels and logger
classes on process-wide loggers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from obskit.logger import DirectLogger, install_direct, uninstall_direct


@contextlib.contextmanager
def preserved_logging() -> Iterator[None]:
    """Restore the root logger and every named logger (handlers, filters, level, propagate,
    disabled) on exit, reset the loggers made meanwhile, lift ``logging.disable`` and put
    obskit's direct logger class back as it was."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), list(root.filters), root.level)
    saved = {
        name: (list(lg.handlers), list(lg.filters), lg.level, lg.propagate, lg.disabled)
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    direct = logging.getLoggerClass() is DirectLogger
    try:
        yield
    finally:
        root.handlers[:], root.filters[:] = saved_root[0], saved_root[1]
        root.setLevel(saved_root[2])
        for name, lg in list(logging.Logger.manager.loggerDict.items()):
            if not isinstance(lg, logging.Logger):
                continue
            handlers, filters, level, propagate, disabled = saved.get(
                name, ([], [], logging.NOTSET, True, False)
            )
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        logging.disable(logging.NOTSET)
        (install_direct if direct else uninstall_direct)()
