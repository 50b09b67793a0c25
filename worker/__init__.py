"""Worker plumbing: the broker, middleware (resources, logging context, metrics), actor registry,
and `worker.enqueue` (how write paths send jobs).

The broker is set up from BROKER_URL the first time one of this package's names is taken
(`from worker import broker`, `current_job` or `JobContext`), as importing the package
used to do, so `jobs` still declares its actors against it. Importing a submodule alone
(`worker.enqueue`, which services use) reads no settings and binds nothing.
`keysync worker` runs every actor of `jobs`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dramatiq.brokers.redis import RedisBroker

    from worker._resources import JobContext, current_job

    broker: RedisBroker

__all__ = ["JobContext", "broker", "current_job"]

_setup_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _setup_lock:
        if "broker" not in globals():
            from keysync.settings import get_settings
            from worker._broker import setup_broker
            from worker._resources import JobContext, current_job

            get_settings().require("broker_url")
            globals().update(
                broker=setup_broker(get_settings().broker_url),
                JobContext=JobContext,
                current_job=current_job,
            )
    return globals()[name]
