"""The operator's checks: one list `{name, state, detail}` from one snapshot.

`keysync status`, the console's overview and the alert rules (docs/alerts.yml) all mean the
same thing by each name. A check whose source is unreachable is `warn` ("unknown"), never
`ok`: the unreachable dependency is itself critical, so `overall` says so once, and nothing
claims health it could not see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel

from services.ops.snapshot import (
    Backlog,
    FundsState,
    RemovalGuardView,
    RunView,
    Snapshot,
    StuckOrders,
    WebhookInbox,
)
from worker.heartbeat import WorkerBeat
from worker.scheduler_state import SchedulerState

S = TypeVar("S")


class CheckState(StrEnum):
    OK = "ok"
    WARN = "warn"
    CRITICAL = "critical"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {CheckState.OK: 0, CheckState.WARN: 1, CheckState.CRITICAL: 2}


class Check(BaseModel):
    name: str
    state: CheckState
    detail: str


def worst(checks: list[Check]) -> CheckState:
    return max((c.state for c in checks), key=lambda s: s.severity, default=CheckState.OK)


def human_s(seconds: float | None) -> str:
    """`42 s`, `3 min`, `2 h 5 min`, `3 d 4 h`: ages an operator reads at a glance."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _unknown(name: str, source: str) -> Check:
    return Check(name=name, state=CheckState.WARN, detail=f"unknown: {source} unreachable")


def _ok(name: str, detail: str) -> Check:
    return Check(name=name, state=CheckState.OK, detail=detail)


def _warn(name: str, detail: str) -> Check:
    return Check(name=name, state=CheckState.WARN, detail=detail)


def _critical(name: str, detail: str) -> Check:
    return Check(name=name, state=CheckState.CRITICAL, detail=detail)


def _reads(
    source: str, section: Callable[[Snapshot], S | None]
) -> Callable[[Callable[[Snapshot, S], Check]], Callable[[Snapshot], Check]]:
    """A check of one snapshot section, named after its function: unknown while `source`
    was unreachable (the section is None), otherwise the check proper, given the section."""

    def wrap(check: Callable[[Snapshot, S], Check]) -> Callable[[Snapshot], Check]:
        @functools.wraps(check)
        def run(snap: Snapshot) -> Check:
            value = section(snap)
            if value is None:
                return _unknown(check.__name__, source)
            return check(snap, value)

        return run

    return wrap


def _age(snap: Snapshot, iso: str | None) -> float | None:
    if iso is None:
        return None
    return max((snap.now - datetime.fromisoformat(iso)).total_seconds(), 0.0)


def database(snap: Snapshot) -> Check:
    if snap.database.ok:
        return _ok("database", f"answered in {snap.database.latency_ms} ms")
    return _critical("database", f"unreachable ({snap.database.error}): nothing can be "
                     "bought, synced or processed")


def redis(snap: Snapshot) -> Check:
    if snap.redis.ok:
        return _ok("redis", f"answered in {snap.redis.latency_ms} ms")
    return _critical("redis", f"unreachable ({snap.redis.error}): the shop reads Postgres "
                     "(cache degraded); syncs, locks and the scheduler stop")


def broker(snap: Snapshot) -> Check:
    if snap.broker.ok:
        return _ok("broker", f"answered in {snap.broker.latency_ms} ms")
    return _critical("broker", f"unreachable ({snap.broker.error}): jobs wait in the "
                     "job outbox until it answers")


@_reads("broker", lambda snap: snap.workers)
def workers(snap: Snapshot, beats: list[WorkerBeat]) -> Check:
    silent_s = snap.thresholds.worker_silent_s
    alive = [b for b in beats if not b.stopped and b.age_s <= silent_s]
    if alive:
        names = ", ".join(b.id for b in alive[:5]) + (" …" if len(alive) > 5 else "")
        return _ok("workers", f"{len(alive)} worker process(es) alive: {names}")
    if not beats:
        return _critical("workers", "no worker has ever sent a heartbeat: start `keysync worker`")
    last = beats[0]
    how = "stopped cleanly" if last.stopped else "silent"
    return _critical("workers", f"no worker heartbeat for {human_s(last.age_s)} (last: "
                     f"{last.id}, {how}); nothing consumes the queues: start `keysync worker`")


@_reads("broker", lambda snap: snap.oldest_ready_s)
def queue_age(snap: Snapshot, oldest_ready_s: dict[str, float]) -> Check:
    queue, age = max(oldest_ready_s.items(), key=lambda qa: qa[1], default=("default", 0.0))
    limits = snap.thresholds
    ready = sum(d.ready for d in (snap.queues or {}).values())
    detail = f"oldest ready message waited {human_s(age)} ({queue}; {ready} ready)"
    if age >= limits.ready_age_critical_s:
        return _critical("queue_age", detail + ": workers are missing or saturated")
    if age >= limits.ready_age_warn_s:
        return _warn("queue_age", detail)
    return _ok("queue_age", detail)


@_reads("broker", lambda snap: snap.dead_letters)
def dead_letters(snap: Snapshot, per_actor_count: dict[str, int]) -> Check:
    total = sum(per_actor_count.values())
    if total == 0:
        return _ok("dead_letters", "none")
    per_actor = ", ".join(f"{a} {n}" for a, n in sorted(per_actor_count.items()))
    return _critical("dead_letters", f"{total} dead-lettered job(s) ({per_actor}): "
                     "`keysync jobs --state dead`, then retry or discard")


def _last_sync(snap: Snapshot, kind: str, name: str, max_age_s: float,
               failed: Callable[[str, str], Check]) -> Check:
    if snap.last_finished is None or snap.last_success is None:
        return _unknown(name, "database")
    finished: RunView | None = snap.last_finished.get(kind)
    success: RunView | None = snap.last_success.get(kind)
    success_age = _age(snap, success["finished_at"] if success else None)
    if finished is not None and finished["status"] == "failed":
        reason = finished["error_detail"] or "no reason recorded"
        return failed(name, f"last {kind} run failed {human_s(_age(snap, finished['finished_at']))}"
                      f" ago: {reason}; last success {human_s(success_age)} ago")
    if success is None:
        return _warn(name, f"no {kind} run has succeeded yet")
    assert success_age is not None
    if success_age > max_age_s:
        return _warn(name, f"last {kind} success {human_s(success_age)} ago "
                     f"(expected within {human_s(max_age_s)})")
    if finished is not None and finished["status"] == "partial":
        return _warn(name, f"last {kind} run partial ({finished['errors']} errors): "
                     f"{finished['error_detail'] or 'see its log'}")
    return _ok(name, f"last {kind} success {human_s(success_age)} ago, "
               f"{success['duration_s']} s")


def full_sync(snap: Snapshot) -> Check:
    return _last_sync(snap, "full", "full_sync", snap.thresholds.full_sync_max_age_s, _critical)


def stock_check(snap: Snapshot) -> Check:
    return _last_sync(snap, "stock", "stock_check", snap.thresholds.stock_check_max_age_s, _warn)


@_reads("database", lambda snap: snap.removal_guard)
def removal_guard(snap: Snapshot, guard: RemovalGuardView) -> Check:
    if not guard["active"]:
        return _ok("removal_guard", "inactive")
    return _critical("removal_guard", f"active since {guard['since']}: {guard['detail']}; if "
                     "G2A really dropped them: `keysync sync --full --allow-mass-removal`")


@_reads("database", lambda snap: snap.cache_outbox)
def cache_outbox(snap: Snapshot, backlog: Backlog) -> Check:
    if backlog.pending == 0:
        return _ok("cache_outbox", "empty")
    return _warn("cache_outbox", f"{backlog.pending} invalidation(s) waiting (oldest "
                 f"{human_s(backlog.oldest_s)}): cached reads may be stale until replayed "
                 "(automatic once Redis answers; now: `keysync outbox relay`)")


@_reads("database", lambda snap: snap.job_outbox)
def job_outbox(snap: Snapshot, backlog: Backlog) -> Check:
    if backlog.pending == 0 or backlog.oldest_s is None:
        return _ok("job_outbox", "empty")
    detail = f"{backlog.pending} job(s) not sent yet (oldest {human_s(backlog.oldest_s)})"
    if backlog.oldest_s >= snap.thresholds.outbox_critical_s:
        return _critical("job_outbox", detail + ": is the broker reachable? "
                         "`keysync outbox relay`")
    if backlog.oldest_s >= snap.thresholds.outbox_warn_s:
        return _warn("job_outbox", detail)
    return _ok("job_outbox", detail)


@_reads("database", lambda snap: snap.webhooks)
def webhooks(snap: Snapshot, inbox: WebhookInbox) -> Check:
    dead = inbox.by_outcome.get("dead", 0)
    if dead:
        return _critical("webhooks", f"{dead} dead webhook event(s): "
                         "`keysync webhooks --outcome dead`, then `keysync webhooks replay --dead`")
    limits = snap.thresholds
    pending_s, orphan_s = inbox.oldest_pending_s, inbox.oldest_orphan_s
    if pending_s is not None and pending_s > limits.webhook_pending_warn_s:
        return _warn("webhooks", f"{inbox.by_outcome['pending']} event(s) unprocessed, oldest "
                     f"{human_s(pending_s)}")
    if orphan_s is not None and orphan_s > limits.webhook_orphan_warn_s:
        return _warn("webhooks", f"{inbox.by_outcome['orphan']} orphan event(s) (order unknown),"
                     f" oldest {human_s(orphan_s)}: `keysync webhooks --outcome orphan`")
    return _ok("webhooks", f"{inbox.by_outcome['pending']} pending, "
               f"{inbox.by_outcome['orphan']} orphan, 0 dead")


@_reads("database", lambda snap: snap.stuck_orders)
def stuck_orders(snap: Snapshot, stuck: StuckOrders) -> Check:
    if stuck.count == 0:
        return _ok("stuck_orders", f"none older than {human_s(stuck.after_s)}")
    return _critical("stuck_orders", f"{stuck.count} order(s) not final after "
                     f"{human_s(stuck.after_s)} (oldest {human_s(stuck.oldest_s)}): "
                     "`keysync orders --stuck`")


@_reads("database", lambda snap: snap.g2a_funds)
def g2a_funds(snap: Snapshot, funds: FundsState) -> Check:
    if not funds.refusing:
        return _ok("g2a_funds", "no G2A refusal for lack of funds "
                   f"in the last {human_s(snap.thresholds.funds_window_s)}")
    assert funds.last_refusal_at is not None
    return _critical("g2a_funds", f"G2A refused {funds.refusals} order(s) for lack of funds "
                     f"(ORD112), last {human_s(_age(snap, funds.last_refusal_at.isoformat()))} "
                     "ago, none paid since: top up the G2A account; refused orders were "
                     "refunded (`keysync orders --status FAILED`)")


@_reads("redis", lambda snap: snap.scheduler)
def scheduler(snap: Snapshot, state: SchedulerState) -> Check:
    if state["leader"]:
        return _ok("scheduler", f"leader {state['leader']}, {len(state['schedulers'])} running")
    return _critical("scheduler", "no scheduler leader: syncs, stock checks, pollers and "
                     "outbox relays are not fired; start `keysync scheduler`")


CHECKS: tuple[Callable[[Snapshot], Check], ...] = (
    database, redis, broker, workers, queue_age, dead_letters, full_sync, stock_check,
    removal_guard, cache_outbox, job_outbox, webhooks, stuck_orders, g2a_funds, scheduler,
)


def evaluate(snap: Snapshot) -> list[Check]:
    return [check(snap) for check in CHECKS]
