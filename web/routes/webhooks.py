"""Endpoint: `POST /webhooks/g2a` (CONTRACT §5).

Order of checks: body size (413) before reading more than the cap, then the Standard
Webhooks signature (401) and timestamp (400) before the body is parsed (400) or anything is
stored. Only then the inbox insert: 202 stored and queued, 200 for a known `webhook-id`.
A dead Postgres surfaces as 503 + Retry-After through the app's error handlers, and the
sender retries: nothing is lost.

Async only to read the body incrementally; the database work runs in the threadpool.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.metrics import WEBHOOK_EVENTS
from services.webhooks import service as webhooks
from web.deps import ResourcesDep
from web.errors import ApiError

router = APIRouter(tags=["webhooks"])

_REJECTION_OUTCOME = {401: "bad_signature", 400: "bad_request", 413: "too_large"}


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise webhooks.WebhookRejected(413, "payload_too_large", "webhook body over 256 KiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:  # a lying or absent Content-Length: stop reading at the cap
            raise webhooks.WebhookRejected(413, "payload_too_large", "webhook body over 256 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/webhooks/g2a", status_code=202)
async def receive_g2a_webhook(request: Request, resources: ResourcesDep) -> JSONResponse:
    try:
        body = await _read_capped(request, webhooks.MAX_BODY_BYTES)
        msg_id = request.headers.get("webhook-id")
        webhooks.verify(
            resources.settings.webhook_secret_list,
            msg_id=msg_id,
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=body,
            now=time.time(),
        )
        payload = webhooks.parse(body)
    except webhooks.WebhookRejected as exc:
        WEBHOOK_EVENTS.labels(_REJECTION_OUTCOME.get(exc.status, "bad_request")).inc()
        raise ApiError(exc.status, exc.code, exc.message) from None
    assert msg_id is not None  # verify() rejects a missing webhook-id
    stored = await run_in_threadpool(
        webhooks.store, resources.sessions, resources.broker, msg_id, payload
    )
    WEBHOOK_EVENTS.labels("accepted" if stored else "duplicate").inc()
    if stored:
        return JSONResponse({"status": "accepted", "webhook_id": msg_id}, status_code=202)
    return JSONResponse({"status": "duplicate", "webhook_id": msg_id}, status_code=200)
