"""Every `keysync status` check flips for a real cause and back once it is repaired.

Real Postgres, Redis, broker, dramatiq workers and the G2A simulator over HTTP; only the
passage of time is simulated (the snapshot's `now`), for thresholds measured in minutes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

import jobs
from db.models import OrderStatus, WebhookEvent
from db.session import make_engine
from g2a_sim import SimServer
from keysync.resources import Resources
from services import job_outbox
from services.cache import Cache, CacheOutbox, make_cache_redis
from services.catalog import LockHeld, record_lock_held, run_catalog_sync, run_stock_check
from services.locks import SYNC_LOCK, RedisLock
from services.ops.checks import Check, CheckState, evaluate, worst
from services.ops.snapshot import Snapshot, Sources, Thresholds, gather
from services.orders.fulfilment import FulfilmentOutcome
from services.webhooks import service as webhooks
from tests.faults.support import Proc, processes, start_worker
from tests.helpers import stop_worker, wait_until
from tests.order_flows import assert_invariants, fulfiller, order_row, place_order, refunds
from tests.order_helpers import sim_game
from worker.election import ScheduleRunner
from worker.enqueue import Actor
from worker.heartbeat import HEARTBEATS, read_heartbeats, redis_now

OK, WARN, CRITICAL = CheckState.OK, CheckState.WARN, CheckState.CRITICAL
Take = Callable[..., Snapshot]


@pytest.fixture
def take(engine: Engine, sessions: sessionmaker[Session], redis_client: redis_lib.Redis,
         broker: Any) -> Take:
    """A snapshot of the test's Postgres and Redis, `now` shifted by `later_s`."""

    def snapshot(later_s: float = 0, **kw: Any) -> Snapshot:
        now = datetime.now(UTC) + timedelta(seconds=later_s)
        return gather(Sources(engine, sessions, redis_client, broker.client), now=now, **kw)

    return snapshot


def checks(snap: Snapshot) -> dict[str, Check]:
    return {c.name: c for c in evaluate(snap)}


def state(take: Take, name: str, **kw: Any) -> CheckState:
    return checks(take(**kw))[name].state


def test_every_check_is_listed_once_in_a_fixed_order(take: Take) -> None:
    names = [c.name for c in evaluate(take())]
    assert names == ["database", "redis", "broker", "workers", "queue_age", "dead_letters",
                     "full_sync", "stock_check", "removal_guard", "cache_outbox", "job_outbox",
                     "webhooks", "stuck_orders", "g2a_funds", "scheduler"]


def test_no_worker_is_critical_until_one_beats_and_again_once_it_stops(
    take: Take, broker: Any,
) -> None:
    found = checks(take())["workers"]
    assert found.state is CRITICAL and "no worker has ever" in found.detail
    import dramatiq

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        alive = wait_until(lambda: (c := checks(take())["workers"]).state is OK and c, 10,
                           "worker heartbeat")
        assert "1 worker process(es) alive" in alive.detail
    finally:
        stop_worker(broker, worker)
    gone = checks(take())["workers"]
    assert gone.state is CRITICAL and "stopped cleanly" in gone.detail


def test_a_killed_worker_process_goes_critical_once_its_heartbeat_is_60_s_old(
    take: Take, redis_client: redis_lib.Redis, tmp_path: Path,
) -> None:
    with processes() as procs:
        procs.append(start_worker(tmp_path, redis_client, {}))
        proc: Proc = procs[0]
        wait_until(lambda: state(take, "workers") is OK, 15, "heartbeat of `keysync worker`")
        beats = read_heartbeats(redis_client)
        assert [(b.host.count(":"), b.stopped) for b in beats] == [(0, False)]
        assert beats[0].started_at and beats[0].pid > 0
        assert beats[0].queues == ("default",)  # what status reads instead of a SCAN
        proc.kill()  # SIGKILL: no shutdown hook says goodbye
    # Within a minute of its last beat a killed worker cannot be told from a busy one...
    assert state(take, "workers") is OK
    # ...after that it can: by Redis's clock, 61 s later.
    later = redis_now(redis_client) + 61
    found = checks(take(heartbeat_now=later))["workers"]
    assert found.state is CRITICAL and "silent" in found.detail


def test_wiping_redis_loses_the_heartbeats_until_the_workers_beat_again(
    take: Take, redis_client: redis_lib.Redis, worker_thread: Any,
) -> None:
    wait_until(lambda: state(take, "workers") is OK, 10, "heartbeat")
    redis_client.flushdb()
    assert not redis_client.exists(HEARTBEATS)
    assert state(take, "workers") is CRITICAL
    # The next beat (every 5 s) brings the worker back without a restart.
    wait_until(lambda: state(take, "workers") is OK, 15, "heartbeat after the wipe")


def test_a_dead_letter_is_critical_naming_its_actor_until_removed(
    take: Take, broker: Any,
) -> None:
    assert state(take, "dead_letters") is OK
    job_outbox.send(broker, Actor.REPLAY_CACHE_OUTBOX.value)
    consumer = broker.consume("default", prefetch=1, timeout=1000)
    message = next(m for m in consumer if m is not None)
    consumer.nack(message)  # what dramatiq does once Retries gives up: the dead-letter set
    consumer.close()
    found = checks(take())["dead_letters"]
    assert found.state is CRITICAL and "replay_cache_outbox 1" in found.detail
    broker.flush("default")  # discarded
    assert state(take, "dead_letters") is OK


def test_a_waiting_ready_message_warns_then_goes_critical_until_consumed(
    take: Take, broker: Any,
) -> None:
    job_outbox.send(broker, Actor.REPLAY_CACHE_OUTBOX.value)
    assert state(take, "queue_age") is OK
    assert state(take, "queue_age", later_s=90) is WARN
    late = checks(take(later_s=400))["queue_age"]
    assert late.state is CRITICAL and "1 ready" in late.detail
    import dramatiq

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: state(take, "queue_age", later_s=400) is OK, 10, "message consumed")
    finally:
        stop_worker(broker, worker)


def test_a_failed_full_sync_is_critical_until_one_succeeds_and_staleness_warns(
    take: Take, sim: SimServer, make_deps: Any,
) -> None:
    assert state(take, "full_sync") is WARN  # none yet
    httpx.post(sim.url + "/_sim/faults", json={"status": 500, "only": "listing"})
    failed = run_catalog_sync(make_deps(sim), full=True)
    assert failed.status == "failed"
    found = checks(take())["full_sync"]
    assert found.state is CRITICAL and "failed" in found.detail
    httpx.delete(sim.url + "/_sim/faults")
    assert run_catalog_sync(make_deps(sim), full=True).status == "succeeded"
    assert state(take, "full_sync") is OK
    stale = checks(take(later_s=13 * 3600 + 60))["full_sync"]
    assert stale.state is WARN and "expected within" in stale.detail


def test_a_full_sync_that_could_not_start_for_the_lock_is_not_a_failed_sync(
    take: Take, sim: SimServer, make_deps: Any, redis_client: redis_lib.Redis,
) -> None:
    assert run_catalog_sync(make_deps(sim), full=True).status == "succeeded"
    holder = RedisLock(redis_client, SYNC_LOCK)
    assert holder.acquire()
    try:
        with pytest.raises(LockHeld) as held:
            run_catalog_sync(make_deps(sim), full=True)
        assert record_lock_held(make_deps(sim), held.value).status == "failed"
    finally:
        holder.release()
    # The row says "did not start"; the catalog's last full sync is still the good one.
    assert state(take, "full_sync") is OK


def test_a_stock_check_older_than_30_minutes_warns(
    take: Take, sim: SimServer, make_deps: Any,
) -> None:
    assert run_catalog_sync(make_deps(sim), full=True).status == "succeeded"
    assert run_stock_check(make_deps(sim)).status == "succeeded"
    assert state(take, "stock_check") is OK
    assert state(take, "stock_check", later_s=31 * 60) is WARN


def test_the_removal_guard_is_critical_until_a_full_sync_succeeds(
    take: Take, sim: SimServer, make_deps: Any,
) -> None:
    assert run_catalog_sync(make_deps(sim), full=True).status == "succeeded"
    httpx.post(sim.url + "/_sim/mutate", json={"removed": 60}).raise_for_status()  # 20 %
    guarded = run_catalog_sync(make_deps(sim), full=True)
    assert guarded.removal_guard
    found = checks(take())
    assert found["removal_guard"].state is CRITICAL
    assert "--allow-mass-removal" in found["removal_guard"].detail
    assert found["full_sync"].state is WARN  # partial
    lifted = run_catalog_sync(make_deps(sim), full=True, allow_mass_removal=True)
    assert lifted.status == "succeeded"
    assert state(take, "removal_guard") is OK and state(take, "full_sync") is OK


def test_an_empty_g2a_wallet_is_critical_until_an_order_is_paid_again(
    take: Take, resources: Resources, sim: SimServer,
) -> None:
    game = sim_game(resources.sessions, sim)
    assert state(take, "g2a_funds") is OK
    httpx.post(sim.url + "/_sim/config", json={"funds": 0}).raise_for_status()
    refused, _ = place_order(resources, [(game, 1)])
    assert fulfiller(resources, sim).run(refused).outcome is FulfilmentOutcome.FAILED
    assert order_row(resources, refused).status is OrderStatus.FAILED
    assert refunds(resources, refused) == 1
    found = checks(take())["g2a_funds"]
    assert found.state is CRITICAL and "ORD112" in found.detail and "1 order" in found.detail

    httpx.post(sim.url + "/_sim/config", json={"funds": 1_000_000}).raise_for_status()
    paid, _ = place_order(resources, [(game, 1)])
    assert fulfiller(resources, sim).run(paid).outcome is FulfilmentOutcome.COMPLETED
    assert state(take, "g2a_funds") is OK
    # An hour later the old refusal is out of the window either way.
    assert state(take, "g2a_funds", later_s=3700) is OK
    assert_invariants(resources, sim)


def test_an_order_not_final_after_order_stuck_after_s_is_critical_until_fulfilled(
    take: Take, resources: Resources, sim: SimServer,
) -> None:
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    assert state(take, "stuck_orders") is OK
    found = checks(take(later_s=901))["stuck_orders"]
    assert found.state is CRITICAL and "1 order(s)" in found.detail
    assert state(take, "stuck_orders", later_s=901,
                 thresholds=Thresholds(order_stuck_after_s=3600)) is OK
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.COMPLETED
    assert state(take, "stuck_orders", later_s=901) is OK


def test_dead_webhooks_are_critical_and_an_old_orphan_warns(
    take: Take, sessions: sessionmaker[Session], resources: Resources, sim: SimServer,
    broker: Any,
) -> None:
    order_id = uuid.uuid4()
    with sessions() as s, s.begin():
        s.execute(insert(WebhookEvent).values(
            event_id="orphan-1", type="order.status_changed",
            payload={"type": "order.status_changed", "data": {
                "order_id": str(order_id), "status": "PROCESSING",
                "occurred_at": "2026-01-01T00:00:00+00:00"}}))
    webhooks.process_event(sessions, broker, resources.cache, "orphan-1")
    assert state(take, "webhooks") is OK  # a fresh orphan waits for its order
    found = checks(take(later_s=1000))["webhooks"]
    assert found.state is WARN and "orphan" in found.detail

    with sessions() as s, s.begin():
        s.execute(insert(WebhookEvent).values(
            event_id="stuck-1", type="order.status_changed", payload={}, attempts=50))
    assert webhooks.sweep(sessions, broker).dead == 1
    dead = checks(take())["webhooks"]
    assert dead.state is CRITICAL and "1 dead" in dead.detail


def test_outbox_backlogs_warn_and_go_critical_until_relayed(
    take: Take, sessions: sessionmaker[Session], broker: Any, redis_url: str,
    dead_redis_url: str,
) -> None:
    from worker.broker import create_broker
    from worker.enqueue import enqueue

    dead_broker = create_broker(dead_redis_url)
    try:
        with sessions() as s, s.begin():
            enqueue(s, dead_broker, Actor.REPLAY_CACHE_OUTBOX)
    finally:
        dead_broker.close()
    assert state(take, "job_outbox") is OK  # sent right after commit, normally
    assert state(take, "job_outbox", later_s=120) is WARN
    assert state(take, "job_outbox", later_s=700) is CRITICAL
    assert job_outbox.relay(sessions, broker, min_age_s=0) == 1
    assert state(take, "job_outbox", later_s=700) is OK
    broker.flush("default")

    dead_cache = Cache(make_cache_redis(dead_redis_url), CacheOutbox(sessions))
    dead_cache.invalidate(["game:1"])  # Redis down: deferred to the outbox
    found = checks(take())["cache_outbox"]
    assert found.state is WARN and "1 invalidation" in found.detail
    assert Cache(make_cache_redis(redis_url), CacheOutbox(sessions)).replay_outbox() == 1
    assert state(take, "cache_outbox") is OK


def test_no_scheduler_leader_is_critical(
    take: Take, redis_client: redis_lib.Redis, broker: Any, settings: Any,
) -> None:
    assert state(take, "scheduler") is CRITICAL
    runner = ScheduleRunner(redis_client, broker, jobs.schedule(settings), identity="host-a:1")
    runner.step()
    try:
        assert checks(take())["scheduler"].detail.startswith("leader host-a:1")
    finally:
        runner.step_down()
    assert state(take, "scheduler") is CRITICAL


def test_dependencies_down_are_critical_and_what_they_hide_is_unknown(
    sessions: sessionmaker[Session], dead_redis_url: str,
) -> None:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    dead_engine = make_engine(f"postgresql+psycopg://u@127.0.0.1:{port}/x", pool_size=1)
    dead_redis = redis_lib.Redis.from_url(dead_redis_url, socket_connect_timeout=1)
    try:
        snap = gather(Sources(dead_engine, sessions, dead_redis, dead_redis))
    finally:
        dead_engine.dispose()
        dead_redis.close()
    found = checks(snap)
    assert {n: found[n].state for n in ("database", "redis", "broker")} == \
        dict.fromkeys(("database", "redis", "broker"), CRITICAL)
    hidden = [c for n, c in found.items() if n not in ("database", "redis", "broker")]
    assert all(c.state is WARN and c.detail.startswith("unknown:") for c in hidden)
    assert worst(list(found.values())) is CRITICAL


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=300, seed=11, rate_limit_per_min=0) as server:
        yield server
