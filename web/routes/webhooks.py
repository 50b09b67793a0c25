"""Endpoint: `POST /webhooks/g2a` (CONTRACT §5).

Order of checks: body size before reading more than the cap, then the Standard Webhooks
signature and timestamp before the body is parsed or anything is stored. Only then the
inbox insert: 202 stored and queued, 200 for a known `webhook-id`. The refusals are
`services.webhooks.errors` (HTTP statuses in web/errors.py); a dead Postgres surfaces as
503 + Retry-After through the app's error handlers, and the sender retries: nothing is lost.

Async only to read the body incrementally; the database work runs in the threadpool.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from services.metrics import WEBHOOK_EVENTS
from services.webhooks import intake
from services.webhooks.errors import (
    InvalidSignature,
    PayloadTooLarge,
    WebhookRejected,
)
from services.webhooks.schemas import WebhookReceipt
from web.deps import ResourcesDep
from web.errors import error_responses

router = APIRouter(tags=["webhooks"])

# `keysync_webhook_events_total` label of each refusal; anything else is a bad request.
_REJECTION_OUTCOME: dict[type[WebhookRejected], str] = {
    InvalidSignature: "bad_signature",
    PayloadTooLarge: "too_large",
}


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:  # a lying or absent Content-Length: stop reading at the cap
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/webhooks/g2a",
    status_code=202,
    response_model=WebhookReceipt,
    responses={
        200: {"model": WebhookReceipt, "description": "duplicate `webhook-id`: no effect"},
        **error_responses(400, 401, 413, 503),
    },
)
async def receive_g2a_webhook(
    request: Request, response: Response, resources: ResourcesDep
) -> WebhookReceipt:
    try:
        body = await _read_capped(request, intake.MAX_BODY_BYTES)
        msg_id = request.headers.get("webhook-id")
        intake.verify(
            resources.settings.webhook_secret_list,
            msg_id=msg_id,
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=body,
            now=time.time(),
        )
        payload = intake.parse(body)
    except WebhookRejected as exc:
        WEBHOOK_EVENTS.labels(_REJECTION_OUTCOME.get(type(exc), "bad_request")).inc()
        raise
    assert msg_id is not None  # verify() rejects a missing webhook-id
    receipt = await run_in_threadpool(
        intake.store, resources.sessions, resources.broker, msg_id, payload
    )
    WEBHOOK_EVENTS.labels(receipt.status).inc()
    if receipt.status == "duplicate":
        response.status_code = 200
    return receipt
