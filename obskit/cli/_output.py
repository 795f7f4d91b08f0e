"""The CLI's output stream, made safe for text it did not make."""

from __future__ import annotations

import unicodedata
from typing import Any, TextIO


def escape_controls(text: str) -> str:
    """``text`` with its control characters shown escaped (``\\x1b``, ``\\n``): text the CLI
    did not make (a spans file, a metrics page) printed raw could drive the terminal with escape
    sequences -- retitle it, clear it, hide what follows."""
    if text.isprintable():  # the common case, in C: nothing to escape
        return text
    return "".join(c if unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


class SafeOutput:
    """Writes to ``stream``; text the stream's encoding refuses (lone surrogates from
    undecodable environment bytes or file names, on a strict UTF-8 stdout) is written with
    backslash escapes instead of ending the command with a traceback."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except UnicodeEncodeError:
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            safe = text.encode(encoding, "backslashreplace").decode(encoding)
            return self._stream.write(safe)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding...
        return getattr(self._stream, name)


def safe_output(stream: TextIO) -> TextIO:
    """``stream`` wrapped in :class:`SafeOutput` (once)."""
    if isinstance(stream, SafeOutput):
        return stream
    return SafeOutput(stream)  # type: ignore[return-value]
