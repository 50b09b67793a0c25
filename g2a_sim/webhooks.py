"""The simulator's webhook sender: signs `order.status_changed` events the way Standard
Webhooks senders do, and delivers them from a background thread with retries."""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import structlog

from g2a_sim.state import SimState

log = structlog.get_logger("g2a_sim")

# The simulator's own test secret, used only when started without --webhook-secret (keysync
# has no default: `keysync up` passes the secret it generated). Public on purpose: it signs
# webhooks for a local stand-in, and keysync accepts it only if an operator configures it.
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"keysync-dev-webhook-secret-32by").decode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookSender:
    """Delivers `order.status_changed` events from one background thread, never from a
    request, retrying failed deliveries with backoff (same `webhook-id` each time, as
    Standard Webhooks senders do, so the receiver can deduplicate)."""

    ATTEMPTS = 5

    def __init__(self, state: SimState, url: str, secret: str) -> None:
        self._state = state
        self._url = url
        self._secret = secret
        self._queue: list[tuple[float, int, str, bytes, int]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="g2a-sim-webhooks", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def order_completed(self, order_id: str) -> None:
        body = json.dumps(
            {
                "type": "order.status_changed",
                "data": {
                    "external_order_id": order_id,
                    "status": "COMPLETED",
                    "occurred_at": datetime.now(UTC).isoformat(),
                },
            },
            separators=(",", ":"),
        ).encode()
        self._push(time.monotonic(), f"msg_{uuid.uuid4().hex}", body, 1)

    def _push(self, due: float, msg_id: str, body: bytes, attempt: int) -> None:
        with self._cond:
            heapq.heappush(self._queue, (due, attempt, msg_id, body, attempt))
            self._cond.notify()

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    now = time.monotonic()
                    if not self._queue or self._queue[0][0] > now:
                        wait = 0.1 if not self._queue else min(0.1, self._queue[0][0] - now)
                        self._cond.wait(timeout=wait)
                        item = None
                    else:
                        item = heapq.heappop(self._queue)
                # Orders whose key_delay_s elapsed since the last look complete "by
                # themselves", as on G2A; their events come from this ticker.
                for order_id in self._state.due_for_completion():
                    self.order_completed(order_id)
                if item is not None:
                    self._deliver(http, item[2], item[3], item[4])

    def _deliver(self, http: httpx.Client, msg_id: str, body: bytes, attempt: int) -> None:
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(self._secret, msg_id, ts, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = http.post(self._url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if status is not None and 200 <= status < 300:
            self.delivered += 1
            log.info("sim.webhook_delivered", webhook_id=msg_id, status=status, attempt=attempt)
            return
        log.warning("sim.webhook_failed", webhook_id=msg_id, status=status, error=error,
                    attempt=attempt)
        if attempt < self.ATTEMPTS:
            self._push(time.monotonic() + 0.5 * 2 ** (attempt - 1), msg_id, body, attempt + 1)
