"""How a failure is written into the results: one line, so that tables and JSON stay readable."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` of an exception, and the next line too when the first
    only introduces it (ends with ":"), as torch.compile's "backend='inductor' raised:" does."""
    message = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not message:
        return type(exc).__name__
    head = message[0] + (f" {message[1]}" if message[0].endswith(":") and len(message) > 1 else "")
    return f"{type(exc).__name__}: {head}"
