"""Reading a client's log for the reason it failed.

The engine reports a failed state to the controller with only the exception's
class name, so the real message is taken from the client's log: the app prints
a user mistake as one line `KD-ERROR <message as a JSON string>`; other failures
leave a Python traceback whose last exception line says what happened.
"""
from __future__ import annotations

import json
import re

from app.errors import ERROR_MARKER

_TRACEBACK = "Traceback (most recent call last):"
# `ValueError: bad value`, `pkg.module.Error: ...` or a bare `KeyboardInterrupt`; not indented.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")


def error_from_log(text: str) -> str | None:
    """The last KD-ERROR message, else the last traceback's exception line, else None."""
    marked = [line.strip()[len(ERROR_MARKER):].strip() for line in text.splitlines()
              if line.strip().startswith(ERROR_MARKER + " ")]
    if marked:
        try:
            message = json.loads(marked[-1])
        except ValueError:
            return marked[-1]
        return message if isinstance(message, str) else marked[-1]
    start = text.rfind(_TRACEBACK)
    if start < 0:
        return None
    return next((line.strip() for line in text[start:].splitlines()[1:] if _EXCEPTION_LINE.match(line)), None)


def tail(text: str, lines: int = 15) -> str:
    """The last lines of a log, indented for showing under a message."""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])
