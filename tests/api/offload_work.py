"""Functions the worker-pool tests run in worker processes (module level, so they pickle by
name; a spawned worker imports this module from the parent's sys.path)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from servewise.core import cancel
from servewise.core.errors import FieldViolation, InvalidInputError


def pid() -> int:
    return os.getpid()


def spin(marker: str, limit_s: float) -> str:
    """Check the cancel token every millisecond for up to ``limit_s``; write how it ended."""
    end = time.monotonic() + limit_s
    try:
        while time.monotonic() < end:
            cancel.check()
            time.sleep(0.001)
    except cancel.WorkCancelledError as exc:
        Path(marker).write_text(f"stopped deadline={exc.deadline} pid={os.getpid()}")
        raise
    Path(marker).write_text("ran to the end")
    return "done"


def invalid(field: str) -> None:
    raise InvalidInputError([FieldViolation(field, "is wrong"), FieldViolation("other", "too")])


def die() -> None:
    os._exit(3)


def echo(value: object) -> object:
    return value


def touch(marker: str) -> str:
    """Leave a trace that the call ran."""
    Path(marker).write_text(f"ran pid={os.getpid()}")
    return "ran"


class _UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("carries a lambda")
        self.callback = lambda: None


def unpicklable_error() -> None:
    raise _UnpicklableError


def fail_to_start(*_: object) -> None:
    """Stands in for the worker's main function: dies before it says hello."""
    os._exit(4)
