"""One fulfilment chain per order at a time: a Redis lease the chain holds while it is alive.

A *chain* is the sequence of `fulfil_order` messages that drive one order while G2A keeps it
waiting (key not ready, G2A answering 5xx): a run that ends PENDING re-sends itself with a
growing delay. Without a guard every other source of `fulfil_order` (the poller every
minute, a webhook, the outbox relay) started a chain of its own next to the live one, and
G2A saw one order-create attempt per chain per step instead of one per step.

The lease `fulfil:chain:{order_id}` holds the chain's token, which every message of the
chain carries as its second argument: the poller's tokens are `host:pid:random` (so an
operator can tell who started it), and a message from outside any chain (`POST /orders`,
a webhook) starts one named after its own message id, `msg:<id>`, so that dramatiq's
redelivery of a killed worker's message, or its retry, is still the same chain. The
holder is the one chain allowed to run fulfilment for the order or to have a resume
pending:

- a run claims it before doing anything (absent, or already its own token) and keeps it
  alive with a renewal thread while it works; a message whose order is held by another
  chain is dropped (the holder comes back on its own);
- a run that ends PENDING hands the lease on to its delayed resume: TTL = delay + grace;
- a run that ends otherwise, or raises, releases it;
- the poller claims it for a token of its own before queueing a new chain, so it never
  starts a second chain while one is alive.

Every TTL is finite, so a chain that died (worker killed, message lost, Redis restarted)
blocks nothing for long: the poller starts a new one once the lease has expired, and a late
message of the dead chain finds the lease taken and drops itself. Money never depends on
the lease: fulfilment's order row lock keeps every G2A step exactly-once; the lease only
keeps the number of attempts down.

The chain's last pending reason is kept beside it (`fulfil:last_error:{order_id}`, a day)
for the give-up alert and for operators.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import structlog

from services.locks import holder_label, lock_value
from services.orders.fulfilment import FulfilmentOutcome, FulfilmentResult

log = structlog.get_logger(__name__)

CHAIN_KEY = "fulfil:chain:{}"
_MESSAGE_PREFIX = "msg:"
LAST_ERROR_KEY = "fulfil:last_error:{}"
LAST_ERROR_TTL_S = 24 * 3600

# While a run works: renewed every third of it, so only a dead worker lets it lapse, and
# a killed worker's order is free for the poller (or dramatiq's redelivery) this soon.
RUN_LEASE_MS = 15_000
# A resume may start late (a busy worker, dramatiq redelivering a killed worker's delayed
# message after its 60 s heartbeat timeout); past delay + grace the chain counts as dead.
RESUME_GRACE_MS = 120_000
# A chain the poller queued has this long to start (outbox relay, queue wait).
START_LEASE_MS = 300_000

BASE_DELAY_MS = 1_000
MAX_DELAY_MS = 60_000

# Set when absent or already ours (a resume, a dramatiq retry, a redelivery of our message).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_token() -> str:
    """A token for a chain the poller starts."""
    return lock_value()


def message_token(message_id: str) -> str:
    """The token of a chain started by a message from outside any chain."""
    return f"{_MESSAGE_PREFIX}{message_id}"


def chain_label(token: str | bytes | None) -> str | None:
    """A token for logs and operators: a message token as is, a `host:pid:random` one
    without the part that could release it (`holder_label`)."""
    raw = token.decode(errors="replace") if isinstance(token, bytes) else token
    if raw is not None and raw.startswith(_MESSAGE_PREFIX):
        return raw
    return holder_label(raw)


def resume_delay_ms(resumes: int) -> int:
    """1, 2, 4 … 60 s: the delay before resume number `resumes + 1`."""
    return int(min(BASE_DELAY_MS * 2 ** min(resumes, 32), MAX_DELAY_MS))


@dataclass(frozen=True, slots=True)
class Resume:
    """Send the chain's next message: same token, `resumes` so far, after `delay_ms`."""

    token: str
    resumes: int
    delay_ms: int


@dataclass(frozen=True)
class FulfilmentChains:
    """The leases (and last pending reasons) of every order's fulfilment chain."""

    redis: redis.Redis

    # --- the lease ------------------------------------------------------------------------

    def claim(self, order_id: uuid.UUID, token: str, ttl_ms: int) -> bool:
        """Take (or keep) the order's lease for `token`; False when another chain has it."""
        return bool(self.redis.eval(_CLAIM, 1, _chain_key(order_id), token, ttl_ms))

    def extend(self, order_id: uuid.UUID, token: str, ttl_ms: int) -> bool:
        return bool(self.redis.eval(_EXTEND, 1, _chain_key(order_id), token, ttl_ms))

    def release(self, order_id: uuid.UUID, token: str) -> bool:
        return bool(self.redis.eval(_RELEASE, 1, _chain_key(order_id), token))

    def holder(self, order_id: uuid.UUID) -> str | None:
        """Which chain holds the order (`chain_label`), or None."""
        return chain_label(self.redis.get(_chain_key(order_id)))

    def alive(self, order_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """The orders among `order_ids` that have a live chain (one round trip)."""
        if not order_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.exists(_chain_key(order_id))
        return {oid for oid, found in zip(order_ids, pipe.execute(), strict=True) if found}

    @contextmanager
    def _renewing(self, order_id: uuid.UUID, token: str) -> Iterator[None]:
        """Keep a claimed run lease alive until the block ends."""
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(order_id, token, stop), daemon=True,
            name=f"renew fulfil chain {order_id}",
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=2)

    def _renew(self, order_id: uuid.UUID, token: str, stop: threading.Event) -> None:
        while not stop.wait(RUN_LEASE_MS / 3000):
            try:
                if not self.extend(order_id, token, RUN_LEASE_MS):
                    # Expired (a long stall) and maybe taken: the other chain's attempts and
                    # ours are serialised by the order row lock; nothing to undo.
                    log.warning("fulfilment chain lease lost while running",
                                order_id=str(order_id), chain=chain_label(token))
                    return
            except redis.RedisError as exc:
                log.warning("fulfilment chain lease renewal failed", order_id=str(order_id),
                            error=str(exc))

    # --- the last pending reason ------------------------------------------------------------

    def record_error(self, order_id: uuid.UUID, reason: str) -> None:
        self.redis.set(_error_key(order_id), reason[:500], ex=LAST_ERROR_TTL_S)

    def clear_error(self, order_id: uuid.UUID) -> None:
        self.redis.delete(_error_key(order_id))

    def last_error(self, order_id: uuid.UUID) -> str | None:
        raw = self.redis.get(_error_key(order_id))
        if raw is None:
            return None
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    # --- one message of a chain -------------------------------------------------------------

    def run(
        self,
        order_id: uuid.UUID,
        token: str,
        resumes: int,
        fulfil: Callable[[uuid.UUID], FulfilmentResult],
    ) -> Resume | None:
        """Run `fulfil(order_id)` as the order's one chain; the resume to send, if any.

        `token` is the chain the message belongs to (`message_token` for a message from
        outside any chain: it starts one if none is alive). With Redis unreachable the run
        goes ahead unguarded but never re-sends itself: the poller drives the order
        meanwhile, one message a minute, so nothing multiplies.
        """
        if not token:
            raise ValueError("a fulfilment chain token must not be empty")
        bound = log.bind(order_id=str(order_id), chain=chain_label(token))
        try:
            holding = self.claim(order_id, token, RUN_LEASE_MS)
        except redis.RedisError as exc:
            bound.warning("fulfilment chain lease unavailable; running unguarded, no resume",
                          error=str(exc))
            fulfil(order_id)
            return None
        if not holding:
            bound.info("fulfilment chain already alive for this order; message dropped",
                       holder=self._holder_quietly(order_id))
            return None
        with self._renewing(order_id, token):
            try:
                result = fulfil(order_id)
            except BaseException as exc:
                # A dramatiq retry of this message reclaims the lease with the same token;
                # until then the poller may start a chain, and the retry then drops itself.
                reason = _describe(exc)
                self._quietly(bound, "release", lambda: self.release(order_id, token))
                self._quietly(bound, "error record",
                              lambda: self.record_error(order_id, reason))
                raise
        try:
            return self._after(order_id, token, resumes, result, bound)
        except redis.RedisError as exc:
            bound.warning("fulfilment chain lease unavailable after the run; no resume",
                          error=str(exc), outcome=result.outcome.value)
            return None

    def _holder_quietly(self, order_id: uuid.UUID) -> str | None:
        try:
            return self.holder(order_id)
        except redis.RedisError:
            return None

    def _after(
        self, order_id: uuid.UUID, token: str, resumes: int, result: FulfilmentResult,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> Resume | None:
        if result.outcome is not FulfilmentOutcome.PENDING:
            self.release(order_id, token)
            self.clear_error(order_id)
            return None
        delay = resume_delay_ms(resumes)
        self.record_error(order_id, result.reason)
        if not self.extend(order_id, token, delay + RESUME_GRACE_MS):
            bound.info("fulfilment chain lease taken over while running; not resumed")
            return None
        return Resume(token, resumes + 1, delay)

    @staticmethod
    def _quietly(bound: structlog.typing.FilteringBoundLogger, what: str,
                 call: Callable[[], object]) -> None:
        try:
            call()
        except redis.RedisError as exc:
            # The lease expires on its own; the run's own error is the one to report.
            bound.warning(f"fulfilment chain {what} failed", error=str(exc))


def _chain_key(order_id: uuid.UUID) -> str:
    return CHAIN_KEY.format(order_id)


def _error_key(order_id: uuid.UUID) -> str:
    return LAST_ERROR_KEY.format(order_id)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
