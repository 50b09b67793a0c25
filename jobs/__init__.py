"""Thin dramatiq actors: decode arguments, take the job's session/resources, call one service.

Importing this package declares every actor against the broker of `worker`.
"""

from jobs import maintenance

__all__ = ["maintenance"]
