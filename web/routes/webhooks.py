"""Endpoint: `POST /webhooks/g2a` (CONTRACT §5).

Order of checks: body size before reading more than the cap, then the Standard Webhooks
signature and timestamp before the body is parsed or anything is stored. Only then the
inbox insert: 202 stored and queued, 200 for a known `webhook-id`. The refusals are
`services.webhooks.errors` (HTTP statuses in web/errors.py); a dead Postgres is the app's
503 `database_unavailable` + Retry-After, and the sender retries: nothing is lost.

Async end to end, on the event loop with no threadpool hop: verification and parsing are
short CPU work, the insert is grouped with concurrent ones into one round trip
(`services.webhooks.inbox_writer`), and the processing job goes to a sender thread
(`web.intake.WebhookIntake`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from services.metrics import WEBHOOK_EVENTS
from services.webhooks import inbox_writer
from services.webhooks import intake as webhook_intake
from services.webhooks.errors import (
    InvalidSignature,
    PayloadTooLarge,
    WebhookRejected,
)
from services.webhooks.schemas import WebhookReceipt
from web.deps import WebhookIntakeDep
from web.errors import database_unavailable, error_responses
from web.intake import WebhookIntake

log = structlog.get_logger(__name__)


@asynccontextmanager
async def _close_intake(app: FastAPI) -> AsyncIterator[None]:
    yield
    intake: WebhookIntake | None = getattr(app.state, "webhook_intake", None)
    if intake is not None:
        await intake.close()


router = APIRouter(tags=["webhooks"], lifespan=_close_intake)

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
async def receive_g2a_webhook(request: Request, intake: WebhookIntakeDep) -> JSONResponse:
    try:
        body = await _read_capped(request, webhook_intake.MAX_BODY_BYTES)
        msg_id = request.headers.get("webhook-id")
        webhook_intake.verify(
            intake.secrets,
            msg_id=msg_id,
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=body,
            now=time.time(),
        )
        payload = webhook_intake.parse(body)
    except WebhookRejected as exc:
        WEBHOOK_EVENTS.labels(_REJECTION_OUTCOME.get(type(exc), "bad_request")).inc()
        raise
    assert msg_id is not None  # verify() rejects a missing webhook-id
    try:
        receipt = await inbox_writer.store_async(intake.writer, msg_id, payload)
    except psycopg.OperationalError as exc:  # Postgres down, or no connection in time
        log.warning("database unavailable", error=str(exc))
        return database_unavailable()
    WEBHOOK_EVENTS.labels(receipt.status).inc()
    # The declared `WebhookReceipt`, answered directly: no per-request validation of a model
    # built just above, on the busiest endpoint.
    return JSONResponse(receipt.model_dump(mode="json"),
                        status_code=200 if receipt.status == "duplicate" else 202)
