"""`keysync jobs`, `jobs retry`, `jobs discard` on the real broker: dead letters made by a
real worker through dramatiq's Retries middleware, retried exactly once, discarded."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message

from jobs import broker as jobs_broker
from tests.cli.ops_helpers import ACTOR, admin_actions, assert_one_audited, cli, cli_process
from tests.helpers import stop_worker, wait_until
from worker.inspect import BrokerInspector, DeadLetters

QUEUE = "test-ops"
FIXED = "test-ops:fixed"  # the "cause" of the failure is repaired once this key exists
RAN = "test-ops:ran"  # tokens of the runs that succeeded
JOB_KEYS = {"message_id", "queue", "actor", "args", "kwargs", "state", "enqueued_at",
            "retries"}


@dramatiq.actor(broker=jobs_broker, queue_name=QUEUE, max_retries=1, min_backoff=10,
                max_backoff=20)
def _ops_probe(token: str) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        if not client.exists(FIXED):
            raise RuntimeError(f"G2A unreachable for {token}")
        client.rpush(RAN, token)
    finally:
        client.close()


@pytest.fixture
def ops_worker(broker: Any) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=2, worker_timeout=100)
    worker.start()
    yield worker
    stop_worker(broker, worker)


def dead_letters(**filters: str) -> dict[str, Any]:
    args = ["jobs", "--state", "dead", "--json"]
    for name, value in filters.items():
        args += [f"--{name}", value]
    run = cli(*args)
    assert run.code == 0, run.stderr
    return run.json


def make_dead(*tokens: str) -> list[str]:
    """Send probes that fail twice (max_retries=1) and wait until all are dead letters."""
    sent = [_ops_probe.send(token).message_id for token in tokens]
    wait_until(lambda: {i["message_id"] for i in dead_letters()["items"]} >= set(sent),
               what="probes dead-lettered")
    return sent


def test_dead_letter_is_listed_retried_once_and_runs(
    ops_worker: dramatiq.Worker, redis_client: Any, sessions: Any
) -> None:
    [message_id] = make_dead("order-1")
    listed = dead_letters()
    assert listed["total"] == 1
    [item] = listed["items"]
    assert JOB_KEYS | {"failed_at", "last_error"} == set(item)
    assert (item["queue"], item["actor"], item["args"], item["kwargs"], item["state"]) == (
        QUEUE, "_ops_probe", ["order-1"], {}, "dead")
    assert item["retries"] == 1  # the attempt Retries re-enqueued; the second one died
    assert item["last_error"] == "RuntimeError: G2A unreachable for order-1"
    assert item["failed_at"] >= item["enqueued_at"]
    assert dead_letters(actor="_ops_probe")["total"] == 1
    assert dead_letters(actor="fulfil_order") == {"items": [], "total": 0}

    human = cli("jobs", "--state", "dead")
    assert human.code == 0 and "_ops_probe" in human.stdout and "1 shown of 1" in human.stdout

    redis_client.set(FIXED, 1)  # the cause is repaired
    retried = cli_process("jobs", "retry", message_id, "--json")
    assert retried.code == 0, retried.stderr
    assert retried.json == {"retried": 1}
    wait_until(lambda: redis_client.lrange(RAN, 0, -1) == [b"order-1"], what="retried run")
    assert dead_letters()["total"] == 0
    row = assert_one_audited(retried, sessions, "jobs.retry")
    assert row.detail["count"] == 1 and row.detail["ids"] == [message_id]
    assert message_id in row.target

    # It is no dead letter any more: a second retry is refused and changes nothing.
    again = cli("jobs", "retry", message_id, "--json")
    assert again.code == 2 and again.json == {"error": f"not dead letters: {message_id}"}
    assert len(admin_actions(sessions)) == 1
    ops_worker.join()
    assert redis_client.lrange(RAN, 0, -1) == [b"order-1"]  # ran once


def test_retry_all_moves_each_dead_letter_once_under_concurrent_retries(
    broker: Any, redis_client: Any, sessions: Any
) -> None:
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        make_dead(*(f"t{i}" for i in range(20)))
    finally:
        stop_worker(broker, worker)
    # Two operators retry everything at the same moment (nobody consumes the queue now).
    results: list[int] = []
    barrier = threading.Barrier(2)

    def retry_all() -> None:
        barrier.wait()
        results.append(DeadLetters(redis_client).retry().count)

    threads = [threading.Thread(target=retry_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 20
    queued = cli("jobs", "--state", "queued", "--actor", "_ops_probe", "--limit", "100",
                 "--json").json
    assert queued["total"] == 20
    assert sorted(i["args"][0] for i in queued["items"]) == sorted(f"t{i}" for i in range(20))
    assert dead_letters()["total"] == 0


def test_discard_deletes_dead_letters_for_good(
    ops_worker: dramatiq.Worker, redis_client: Any, sessions: Any
) -> None:
    first, second, third = make_dead("a", "b", "c")
    one = cli_process("jobs", "discard", first, "--json")
    assert one.code == 0 and one.json == {"discarded": 1}, one.stderr
    assert {i["message_id"] for i in dead_letters()["items"]} == {second, third}
    row = assert_one_audited(one, sessions, "jobs.discard")
    assert row.detail["ids"] == [first]

    filtered = cli("jobs", "discard", "--all", "--actor", "someone_else", "--json")
    assert filtered.code == 0 and filtered.json == {"discarded": 0}
    everything = cli("jobs", "discard", "--all", "--json")
    assert everything.code == 0 and everything.json == {"discarded": 2}
    assert dead_letters()["total"] == 0
    assert [r.action for r in admin_actions(sessions)] == ["jobs.discard"] * 3
    assert redis_client.llen(f"dramatiq:{QUEUE}") == 0  # nothing was re-enqueued
    assert not redis_client.exists(RAN)


def test_listing_states_newest_first(broker: Any, redis_client: Any) -> None:
    # Nobody consumes: messages stay where dramatiq put them.
    for token in ("q1", "q2", "q3"):
        _ops_probe.send(token)
        time.sleep(0.002)  # distinct enqueue milliseconds, for a deterministic order
    _ops_probe.send_with_options(args=("later",), delay=60_000)
    queued = cli("jobs", "--state", "queued", "--json").json
    assert [i["args"] for i in queued["items"]] == [["q3"], ["q2"], ["q1"]]
    assert queued["total"] == 3 and {i["state"] for i in queued["items"]} == {"queued"}
    assert all(set(i) == JOB_KEYS for i in queued["items"])  # no failed_at / last_error
    delayed = cli("jobs", "--state", "delayed", "--json").json
    assert [(i["args"], i["state"]) for i in delayed["items"]] == [(["later"], "delayed")]
    everything = cli("jobs", "--limit", "2", "--json").json
    assert everything["total"] == 4 and len(everything["items"]) == 2
    assert everything["items"][0]["args"] == ["later"]  # the newest enqueue


def test_refusals_and_usage_errors_exit_2() -> None:
    for args, message in [
        (("jobs", "retry", "--json"), "ids or --all"),
        (("jobs", "retry", "x", "--all", "--json"), "ids or --all"),
        (("jobs", "discard", "no-such-id", "--json"), "not dead letters: no-such-id"),
    ]:
        run = cli(*args)
        assert run.code == 2, (args, run.stdout, run.stderr)
        assert message in run.json["error"]
    assert cli("jobs", "--state", "sleeping").code == 2
    assert cli("jobs", "--limit", "0").code == 2


def test_broker_unreachable_exits_5(dead_redis_url: str) -> None:
    run = cli_process("jobs", "--state", "dead", "--json", BROKER_URL=dead_redis_url)
    assert run.code == 5 and "Redis unreachable" in run.stderr


def test_ten_thousand_dead_letters_list_in_one_window(
    broker: Any, redis_client: Any
) -> None:
    """`keysync jobs --state dead --limit 50` reads the newest 50 only, whatever the size of
    the dead set (Redis' own command statistics say what was read)."""
    now_ms = int(time.time() * 1000)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(10_000):
        # Exactly what dramatiq's `nack` leaves: the member scored by death time, the body.
        message = Message(queue_name=QUEUE, actor_name="_ops_probe", args=(f"d{i}",),
                          kwargs={}, options={"redis_message_id": f"rid-{i}", "retries": 1})
        pipe.zadd(f"dramatiq:{QUEUE}.XQ", {f"rid-{i}": now_ms - 10_000 + i})
        pipe.hset(f"dramatiq:{QUEUE}.XQ.msgs", f"rid-{i}", message.encode())
    pipe.execute()
    redis_client.config_resetstat()
    started = time.perf_counter()
    listed = cli("jobs", "--state", "dead", "--limit", "50", "--json").json
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert listed["total"] == 10_000
    assert [i["args"][0] for i in listed["items"]] == [f"d{i}" for i in range(9_999, 9_949, -1)]
    stats = redis_client.info("commandstats")
    # One window per queue (`default` has no dead letters: nothing to fetch there).
    assert stats["cmdstat_zrevrange"]["calls"] == len(BrokerInspector(redis_client).queues())
    assert stats["cmdstat_hmget"]["calls"] == 1
    assert not {"cmdstat_hgetall", "cmdstat_hvals", "cmdstat_zrange"} & set(stats)
    print(f"\njobs --state dead --limit 50 over 10,000 dead letters: {elapsed_ms:.1f} ms "
          "(in-process CLI)")
    assert elapsed_ms < 2_000  # generous: 2 shared cores; the read itself is one window
    assert ACTOR.startswith("cli:")
