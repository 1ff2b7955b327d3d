"""The one error type users see: a message positioned at file:line:col with the source line and a caret."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a source file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class GraphcError(Exception):
    """An error a user can cause. Printed without a traceback by the CLI.

    `loc` points at the offending source; `source` is the file text (for the caret line);
    `hint` is an optional suggestion.
    """

    def __init__(self, message: str, loc: Loc | None = None, source: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.source = source
        self.hint = hint

    def with_source(self, source: str) -> "GraphcError":
        if self.source is None:
            self.source = source
        return self

    def __str__(self) -> str:
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [head]
        if self.loc and self.source is not None:
            src_lines = self.source.splitlines()
            if 1 <= self.loc.line <= len(src_lines):
                text, col = _around(src_lines[self.loc.line - 1], max(self.loc.col, 1) - 1)
                lines.append("    " + text)
                lines.append("    " + " " * col + "^")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


def _around(text: str, col: int, width: int = 100) -> tuple[str, int]:
    """A source line cut to `width` characters around column `col` (0-based), and the column in
    what is left: a generated file's line can be megabytes long."""
    if len(text) <= width:
        return text, col
    start = max(0, min(col - width // 2, len(text) - width))
    head = "..." if start else ""
    tail = "..." if start + width < len(text) else ""
    return head + text[start:start + width] + tail, col - start + len(head)


class DataError(GraphcError):
    """Bad or missing data files (names the file and what is wrong)."""


class InternalError(Exception):
    """A broken invariant of graphc itself (a bug, not the user's): the CLI prints it as an internal
    error with `detail` (the IR that broke it), never as the user's mistake."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return "\n".join(filter(None, [f"internal error: {self.message}", self.detail,
                                        "this is a bug in graphc: please report it with the model file"]))


_SPECIAL = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
            (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def check_regular(path: str | os.PathLike) -> None:
    """Refuse an existing path that is not a regular file: reading a FIFO waits for a writer and
    /dev/zero never ends. (A missing file is left to the reader to report in its own words.)"""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    kind = next((kind for test, kind in _SPECIAL if test(mode)), None)
    if kind:
        raise GraphcError(f"{os.fspath(path)} is {kind}, not a regular file")
