"""Outgoing email: `EMAIL_BACKEND=log` (default; logs recipient and subject only) or `smtp`.

`SMTP_URL` is `smtp://[user:password@]host[:port]` (STARTTLS when the server offers it) or
`smtps://...` (implicit TLS). Called from the `send_email` actor, never from a request, so a
slow or broken mail server costs a retry, not a user's time. The body and the URL's
credentials are never logged.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import structlog

from keysync.settings import Settings

log = structlog.get_logger(__name__)

SMTP_TIMEOUT_S = 10.0
DEFAULT_SENDER = "keysync <no-reply@keysync.local>"


def send_email(settings: Settings, to: str, subject: str, body: str) -> None:
    """Deliver one plain-text email; raises on SMTP failure so the actor can retry."""
    if settings.email_backend == "log":
        log.info("email (log backend)", to=to, subject=subject, body_chars=len(body))
        return
    _send_smtp(settings.smtp_url.get_secret_value(), to, subject, body)
    log.info("email sent", to=to, subject=subject)


def _send_smtp(url: str, to: str, subject: str, body: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        # The URL may hold a password: name the variable, never echo the value.
        raise ValueError("SMTP_URL must look like smtp://user:pass@host:port or smtps://...")
    message = EmailMessage()
    message["From"] = DEFAULT_SENDER
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    context = ssl.create_default_context()
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            parts.hostname, parts.port or 465, timeout=SMTP_TIMEOUT_S, context=context
        )
    else:
        client = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=SMTP_TIMEOUT_S)
    with client:
        if parts.scheme == "smtp":
            client.ehlo()
            if client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message)
