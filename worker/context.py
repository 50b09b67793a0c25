"""What an actor sees of the message it handles: `current_job()` gives its `JobContext`.

The context (the process's `Resources` and a Session of its own for this message) is set
by `worker._resources.ResourcesMiddleware` before an actor runs and cleared, the session
closed, afterwards. Actors stay thin: parse arguments, call one service.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dramatiq
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from keysync.resources import Resources


@dataclass
class JobContext:
    resources: Resources
    session: Session
    message: dramatiq.MessageProxy


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("job", default=None)


def current_job() -> JobContext:
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() called outside a dramatiq message")
    return job


def enter(job: JobContext) -> None:
    _current.set(job)


def leave() -> None:
    """Close the message's session (even if the actor raised) and forget the context."""
    job = _current.get()
    if job is not None:
        job.session.close()
        _current.set(None)
