"""The worker's group commit for webhook events (`services.webhooks.batch.EventBatcher`).

A batch is forced, not hoped for: the first event's order row is locked by the test, so its
thread (leading, alone) waits on Postgres (proven from `pg_stat_activity`) while the
others queue behind it; releasing the lock lets them run as one batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal

import pytest
from sqlalchemy import insert, select

from db.models import Order, OrderStatus, WebhookEvent
from keysync.resources import Resources
from services.metrics import WEBHOOK_BATCH_EVENTS
from services.webhooks import intake
from services.webhooks.batch import EventBatcher
from services.webhooks.schemas import WebhookOutcome
from services.webhooks.service import ProcessResult
from tests.helpers import lock_waiters, wait_until
from tests.order_flows import assert_invariants, order_row, place_order, refunds
from tests.order_helpers import balance, make_game, status_body


def _order(resources: Resources) -> tuple[uuid.UUID, uuid.UUID]:
    game = make_game(resources.sessions, price="25.00")
    return place_order(resources, [(game, 1)], funds="100.00", status=OrderStatus.PROCESSING)


def _store(resources: Resources, status: str, order_id: uuid.UUID) -> str:
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = status_body(status, order_id=order_id)
    intake.store(resources.sessions, resources.broker, msg_id, intake.parse(body))
    return msg_id


def _batches() -> tuple[float, float]:
    """(batches run, events in them) so far, from the batch-size histogram."""
    samples = {s.name: s.value for m in WEBHOOK_BATCH_EVENTS.collect() for s in m.samples}
    return samples["keysync_webhook_batch_events_count"], samples[
        "keysync_webhook_batch_events_sum"]


@contextmanager
def _queued_behind_a_locked_order(
    resources: Resources, batcher: EventBatcher, event_ids: list[str],
) -> Iterator[list[Future[ProcessResult]]]:
    """Submit `event_ids` from threads while a first event waits on its order's row lock;
    yields their futures once all of them are queued, and lets the first one go on exit
    (the caller then collects the futures)."""
    blocked_order, _ = _order(resources)
    first = _store(resources, "FAILED", blocked_order)
    with resources.engine.connect() as blocker, ThreadPoolExecutor(len(event_ids) + 1) as pool:
        lock = blocker.begin()
        blocker.execute(select(Order.id).where(Order.id == blocked_order).with_for_update())
        leader = pool.submit(batcher.process, first)
        wait_until(lambda: lock_waiters(resources.engine, "transactionid") == 1,
                   what="the first event waiting on its order's row lock")
        futures = [pool.submit(batcher.process, event_id) for event_id in event_ids]
        wait_until(lambda: batcher.waiting == len(event_ids), what="the others queued")
        try:
            yield futures
        finally:
            lock.rollback()
        assert leader.result().outcome == WebhookOutcome.PROCESSED


def _results(futures: list[Future[ProcessResult]]) -> list[ProcessResult]:
    return [f.result(timeout=30) for f in futures]


def test_events_queued_behind_a_running_one_commit_as_one_batch(resources: Resources) -> None:
    batcher = EventBatcher(resources.sessions, resources.broker, resources.cache)
    orders = [_order(resources) for _ in range(4)]
    events = [_store(resources, "FAILED", order_id) for order_id, _ in orders]
    runs, sizes = _batches()
    with _queued_behind_a_locked_order(resources, batcher, events) as futures:
        pass
    assert [r.outcome for r in _results(futures)] == [WebhookOutcome.PROCESSED] * 4
    assert _batches() == (runs + 1, sizes + 4)  # one transaction for the four
    for order_id, user_id in orders:
        assert order_row(resources, order_id).status is OrderStatus.FAILED
        assert refunds(resources, order_id) == 1
        assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert_invariants(resources, webhook_grace=False)


def test_one_order_twice_and_one_event_twice_in_a_batch(resources: Resources) -> None:
    """Events of one batch are applied one after the other in its transaction: the second
    status for the same order sees the first (forward-only, one refund), and a second
    delivery of the same event finds it done."""
    batcher = EventBatcher(resources.sessions, resources.broker, resources.cache)
    order_id, user_id = _order(resources)
    failed, cancelled = (_store(resources, s, order_id) for s in ("FAILED", "CANCELLED"))
    runs, sizes = _batches()
    with _queued_behind_a_locked_order(
        resources, batcher, [failed, cancelled, failed]
    ) as futures:
        pass
    first, second, again = _results(futures)
    assert sorted([first.outcome, second.outcome]) == [WebhookOutcome.IGNORED,
                                                       WebhookOutcome.PROCESSED]
    assert again.outcome == WebhookOutcome.ALREADY
    assert _batches() == (runs + 1, sizes + 2)
    assert order_row(resources, order_id).status in (OrderStatus.FAILED, OrderStatus.CANCELLED)
    assert refunds(resources, order_id) == 1
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert_invariants(resources, webhook_grace=False)


def test_a_failing_event_fails_alone_and_the_rest_of_its_batch_is_applied(
    resources: Resources,
) -> None:
    batcher = EventBatcher(resources.sessions, resources.broker, resources.cache)
    orders = [_order(resources) for _ in range(2)]
    good = [_store(resources, "CANCELLED", order_id) for order_id, _ in orders]
    # Stored as no intake would store it (an order id Postgres cannot cast): its statement
    # fails, and with it the transaction of any batch holding it.
    poison = f"msg_{uuid.uuid4().hex}"
    with resources.sessions() as s, s.begin():
        s.execute(insert(WebhookEvent).values(event_id=poison, type="order.status_changed",
                                              payload={"type": "order.status_changed", "data": {
                                                  "order_id": "not-a-uuid", "status": "FAILED",
                                                  "occurred_at": "2026-01-01T00:00:00Z"}}))
    runs, _ = _batches()
    with _queued_behind_a_locked_order(resources, batcher, [good[0], poison, good[1]]) as futures:
        pass
    assert _batches()[0] == runs + 1  # tried as one batch, which failed
    assert [futures[0].result().outcome, futures[2].result().outcome] == [
        WebhookOutcome.PROCESSED] * 2
    with pytest.raises(Exception, match="uuid"):
        futures[1].result()
    with resources.sessions() as s:
        stored = s.scalars(select(WebhookEvent).where(WebhookEvent.event_id == poison)).one()
    assert stored.processed_at is None and stored.attempts == 1
    assert stored.last_error is not None and "uuid" in stored.last_error
    for order_id, _ in orders:
        assert order_row(resources, order_id).status is OrderStatus.CANCELLED
        assert refunds(resources, order_id) == 1
