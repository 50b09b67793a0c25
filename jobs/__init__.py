"""Thin dramatiq actors: decode arguments, take the job's session/resources, call one service.

Importing this package declares every actor against the broker of `worker`.
"""

from jobs import accounts, catalog, maintenance, orders, webhooks

__all__ = ["accounts", "catalog", "maintenance", "orders", "webhooks"]
