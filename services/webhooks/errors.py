"""Why a webhook delivery is refused before anything is stored (CONTRACT §5 answers; the
HTTP status of each is in web/errors.py). The sender retries none of these usefully: a
refused delivery is dropped, so only what really is wrong is refused."""

from __future__ import annotations

from services.errors import DomainError


class WebhookRejected(DomainError):
    """The delivery was refused; nothing was stored."""

    code = "invalid_webhook"


class PayloadTooLarge(WebhookRejected):
    """The body is over the cap (`intake.MAX_BODY_BYTES`), declared or actually read."""

    code = "payload_too_large"
    message = "webhook body over 256 KiB"


class InvalidSignature(WebhookRejected):
    """Missing Standard Webhooks headers, no v1 signature, or none that matches a secret."""

    code = "invalid_signature"


class InvalidTimestamp(WebhookRejected):
    """`webhook-timestamp` is not an integer or is outside the tolerance (checked only
    after the signature, so an unauthenticated caller learns nothing about it)."""

    code = "invalid_timestamp"


class MalformedWebhook(WebhookRejected):
    """Signed, but the body or `webhook-id` does not have the shape of CONTRACT §5."""

    code = "invalid_webhook"
