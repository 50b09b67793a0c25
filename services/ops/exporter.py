"""Cluster-wide gauges for `GET /metrics`, read from the shared state at scrape time.

Counters a process keeps in memory only ever describe that process; what an operator alerts
on (queue depth, dead letters, outbox lengths, stuck orders, time since the last good sync,
live workers) lives in Postgres and Redis, so the web process reads it there, through the
same snapshot as `keysync status`, and one scrape sees the whole cluster. A snapshot is
reused for `ttl_s` and taken by one scrape at a time, so however often (or concurrently)
Prometheus and people scrape, the databases see at most one read per `ttl_s`.

Every metric is always exported (zero, or +Inf for "never"), so an alert can tell "nothing
wrong" from "not measured"; `keysync_state_up{source}` says which sources were readable.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from db.models import SyncKind, SyncStatus
from services.ops.checks import Check, evaluate
from services.ops.snapshot import WEBHOOK_OUTCOMES, Snapshot

QUEUE_STATES = ("ready", "delayed", "in_progress", "dead")
_STATE_VALUE = {"ok": 0, "warn": 1, "critical": 2}


class StateCollector(Collector):
    """A prometheus-client collector over `take()` (a fresh snapshot), cached for `ttl_s`."""

    def __init__(self, take: Callable[[], Snapshot], *, ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._take = take
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._taken_at = -math.inf
        self.snapshots_taken = 0

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._cached is None or self._clock() - self._taken_at >= self._ttl_s:
                started = time.perf_counter()
                snap = self._take()
                self.snapshots_taken += 1
                self._cached = metrics(snap, evaluate(snap),
                                       collect_s=time.perf_counter() - started)
                self._taken_at = self._clock()
            return list(self._cached)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def metrics(snap: Snapshot, checks: list[Check], *, collect_s: float = 0.0) -> list[Metric]:
    """The samples of one snapshot (names are listed in docs/operations.md §12)."""
    out: list[Metric] = []
    up = _gauge("keysync_state_up", "1 when the source answered the last state scrape",
                ("source",))
    for name, probe in (("database", snap.database), ("redis", snap.redis),
                        ("broker", snap.broker)):
        up.add_metric([name], float(probe.ok))
    out.append(up)
    took = _gauge("keysync_state_scrape_seconds", "Time the last shared-state read took")
    took.add_metric([], collect_s)
    out.append(took)

    check_state = _gauge("keysync_check_state",
                         "Each `keysync status` check: 0 ok, 1 warn (or unknown), 2 critical",
                         ("check",))
    for check in checks:
        check_state.add_metric([check.name], _STATE_VALUE[check.state.value])
    out.append(check_state)

    out += _broker_metrics(snap)
    out += _sync_metrics(snap)
    out += _backlog_metrics(snap)
    return out


def _broker_metrics(snap: Snapshot) -> list[Metric]:
    depth = _gauge("keysync_queue_messages", "Broker messages by queue and state",
                   ("queue", "state"))
    for queue, d in (snap.queues or {}).items():
        for state in QUEUE_STATES:
            depth.add_metric([queue, state], getattr(d, state))
    oldest = _gauge("keysync_queue_oldest_ready_age_seconds",
                    "How long the next ready message of a queue has waited", ("queue",))
    for queue, age in (snap.oldest_ready_s or {}).items():
        oldest.add_metric([queue], age)
    dead = _gauge("keysync_dead_letters", "Dead-lettered broker messages by actor", ("actor",))
    for actor, count in (snap.dead_letters or {}).items():
        dead.add_metric([actor], count)
    alive = _gauge("keysync_workers_alive",
                   "Worker processes whose heartbeat is recent (none: nothing consumes jobs)")
    newest = _gauge("keysync_worker_last_heartbeat_age_seconds",
                    "Seconds since the freshest worker heartbeat (+Inf: never)")
    if snap.workers is not None:
        silent_s = snap.thresholds.worker_silent_s
        alive.add_metric([], sum(not b.stopped and b.age_s <= silent_s for b in snap.workers))
        running = [b.age_s for b in snap.workers if not b.stopped]
        newest.add_metric([], min(running, default=math.inf))
    leader = _gauge("keysync_scheduler_leader_present",
                    "1 while some scheduler holds the leader lock (0: cron jobs do not fire)")
    if snap.scheduler is not None:
        leader.add_metric([], float(bool(snap.scheduler["leader"])))
    return [depth, oldest, dead, alive, newest, leader]


def _sync_metrics(snap: Snapshot) -> list[Metric]:
    since = _gauge("keysync_sync_last_success_age_seconds",
                   "Seconds since the last successful run finished, by kind (+Inf: never)",
                   ("kind",))
    duration = _gauge("keysync_sync_last_success_duration_seconds",
                      "Duration of the last successful run, by kind", ("kind",))
    for kind in SyncKind:
        run = (snap.last_success or {}).get(kind.value)
        if snap.last_success is None:
            continue
        if run is None or run["finished_at"] is None:
            since.add_metric([kind.value], math.inf)
            continue
        finished = snap.now.timestamp() - _epoch(run["finished_at"])
        since.add_metric([kind.value], max(finished, 0.0))
        duration.add_metric([kind.value], run["duration_s"])
    last = _gauge("keysync_sync_last_run_status",
                  "1 for the status of the last finished run of each kind", ("kind", "status"))
    for kind in SyncKind:
        run = (snap.last_finished or {}).get(kind.value)
        if snap.last_finished is None:
            continue
        for status in SyncStatus:
            if status is not SyncStatus.RUNNING:
                last.add_metric([kind.value, status.value],
                                float(run is not None and run["status"] == status.value))
    runs = CounterMetricFamily("keysync_sync_runs", "Sync runs recorded in sync_runs, by kind "
                               "and status", labels=["kind", "status"])
    if snap.run_counts is not None:
        for kind in SyncKind:
            for status in SyncStatus:
                runs.add_metric([kind.value, status.value],
                                snap.run_counts.get((kind.value, status.value), 0))
    guard = _gauge("keysync_removal_guard_active",
                   "1 while a full sync stopped by the removal guard has not been followed by "
                   "a successful full sync")
    if snap.removal_guard is not None:
        guard.add_metric([], float(snap.removal_guard["active"]))
    return [since, duration, last, runs, guard]


def _backlog_metrics(snap: Snapshot) -> list[Metric]:
    outbox = _gauge("keysync_outbox_pending", "Rows waiting in an outbox", ("outbox",))
    outbox_age = _gauge("keysync_outbox_oldest_age_seconds",
                        "Age of the oldest row of an outbox (0 when empty)", ("outbox",))
    for name, backlog in (("cache", snap.cache_outbox), ("job", snap.job_outbox)):
        if backlog is not None:
            outbox.add_metric([name], backlog.pending)
            outbox_age.add_metric([name], backlog.oldest_s or 0.0)
    inbox = _gauge("keysync_webhook_inbox_events", "Stored webhook events by outcome "
                   "(pending = not processed yet)", ("outcome",))
    if snap.webhooks is not None:
        for outcome in WEBHOOK_OUTCOMES:
            inbox.add_metric([outcome], snap.webhooks.by_outcome.get(outcome, 0))
    stuck = _gauge("keysync_orders_stuck",
                   "Orders not final for longer than ORDER_STUCK_AFTER_S")
    if snap.stuck_orders is not None:
        stuck.add_metric([], snap.stuck_orders.count)
    funds = _gauge("keysync_g2a_insufficient_funds",
                   "1 while G2A's last answer to a purchase was ORD112 (not enough funds) "
                   "within the window and no G2A order was paid since")
    refusals = _gauge("keysync_g2a_funds_refusals_recent",
                      "G2A purchases refused for lack of funds (ORD112) within the window")
    if snap.g2a_funds is not None:
        funds.add_metric([], float(snap.g2a_funds.refusing))
        refusals.add_metric([], snap.g2a_funds.refusals)
    return [outbox, outbox_age, inbox, stuck, funds, refusals]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
