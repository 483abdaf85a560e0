"""How a failure is written into the results: one line, so that tables and JSON stay readable."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` of an exception."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
