"""The `keysync` console script: the click group of `_group` and the commands, one topic a
module, each a plain click command that knows nothing of the group it is added to."""

from __future__ import annotations

from keysync.cli import (
    check,
    db,
    jobs,
    orders,
    outbox,
    processes,
    status,
    sync,
    up,
    users,
    webhooks,
)
from keysync.cli._group import main

for _command in (
    db.db,
    processes.serve,
    processes.worker,
    processes.scheduler,
    processes.g2a_sim,
    up.up,
    sync.sync,
    sync.stock_check,
    status.status,
    check.check,
    users.user,
    jobs.jobs,
    webhooks.webhooks,
    orders.orders,
    outbox.outbox,
):
    main.add_command(_command)

__all__ = ["main"]
