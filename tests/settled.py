"""Waiting for the stack's functions to finish what a test looks at, instead of sleeping.

A job's state changes before its function returns: the worker still writes its last log lines
and metrics after ``mark_done``. The pump records an invocation only once the function has
returned, and a worker's log file is line-buffered, so every line an invocation wrote is on disk
once the invocation is recorded: waiting for it replaces a sleep that assumes an idle machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from infrastructure.event_pump import Invocation
from infrastructure.local_stack import LocalStack

SETTLE_SECONDS = 60.0


def settled_invocations(
    stack: LocalStack,
    function: str,
    containing: str,
    done: Callable[[list[Invocation]], bool] = bool,
    timeout: float = SETTLE_SECONDS,
) -> list[Invocation]:
    """The recorded invocations of ``function`` whose message holds ``containing``, once ``done``
    says they are all there (by default: at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        invocations = stack.inspect.invocations_of(function, containing)
        if done(invocations):
            return invocations
        if time.monotonic() > deadline:
            raise AssertionError(f"{function} invocations for {containing!r} not settled after {timeout:.0f} s")
        time.sleep(0.1)


def json_log_lines(stack: LocalStack, function: str) -> list[dict[str, Any]]:
    """Every JSON line of a function's log file (structured logs and EMF metrics)."""
    lines = []
    for line in (stack.log_dir / f"{function}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a traceback's text, not a record
                continue
    return lines


def all_logs(stack: LocalStack) -> str:
    """The text of every log file the stack writes (functions, endpoint, front)."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(stack.log_dir.glob("*.log")))
