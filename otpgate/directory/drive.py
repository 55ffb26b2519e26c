"""Running a step: a generator that yields directory requests and is sent their answers.

The one loop every driver shares: the state engine's steps (``engine.py``) in the gateway
(``store.py``) and the CLI (``sync.py``), the replication probe (``replication.py``) and the
PDC emulator discovery (``discovery.py``).  ``perform`` does one request; an error it raises
is thrown into the step (which may undo what it did, or let it propagate), and the step's
return value is the result.  No I/O here: the caller's ``perform`` does it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
Request = TypeVar("Request")


def run_steps(step: Generator[Request, Any, T], perform: Callable[[Request], Any]) -> T:
    """Drive ``step`` with a blocking ``perform`` (ldap3)."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            request = step.send(answer) if error is None else step.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        answer, error = None, None
        try:
            answer = perform(request)
        except Exception as exc:  # handed to the step, which re-raises or undoes
            error = exc


async def run_steps_async(
    step: Generator[Request, Any, T], perform: Callable[[Request], Awaitable[Any]]
) -> T:
    """Drive ``step`` with an asynchronous ``perform`` (the gateway's client)."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            request = step.send(answer) if error is None else step.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        answer, error = None, None
        try:
            answer = await perform(request)
        except Exception as exc:  # handed to the step, which re-raises or undoes
            error = exc
