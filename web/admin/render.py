"""The console's templates (Jinja2, autoescaped) and the few filters they share.

Every value reaches HTML through Jinja's autoescape; nothing is marked safe except the SVG
`charts` builds from numbers and escaped labels.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from services.ops.display import number_text

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.autoescape = True

NAV = (("overview", "Overview", "/admin"), ("jobs", "Jobs", "/admin/jobs"),
       ("syncs", "Syncs", "/admin/syncs"), ("webhooks", "Webhooks", "/admin/webhooks"),
       ("orders", "Orders", "/admin/orders"), ("audit", "Audit", "/admin/audit"))


def _when(value: Any) -> str:
    """An ISO time or datetime as `YYYY-MM-DD HH:MM:SS` UTC ("-" when absent)."""
    if value is None or value == "":
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return str(moment.strftime("%Y-%m-%d %H:%M:%S"))


def _seconds(value: Any) -> str:
    """A duration for people: 45 s, 12 min, 3.5 h, 2.1 d."""
    if value is None:
        return "-"
    s = float(value)
    if s < 120:
        return f"{s:.0f} s" if s >= 10 or s == int(s) else f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


templates.env.filters.update(when=_when, seconds=_seconds, number=number_text, pretty=_pretty)


def page(request: Request, name: str, context: dict[str, Any], *,
         status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`name` rendered with the layout's context (nav, the signed-in admin if any)."""
    full = {"nav": NAV, "admin": None, "section": None, **context}
    response = templates.TemplateResponse(request, name, full, status_code=status_code,
                                          headers=headers)
    # Pages show operational state: never from a shared cache, never framed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'")
    return response


def message(request: Request, status_code: int, heading: str, text: str, *,
            admin: Any = None, retry_after: int | None = None) -> Response:
    """A refusal or error as a page (403, 404, 429, 503 ...)."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return page(request, "message.html",
                {"status_code": status_code, "heading": heading, "message": text,
                 "admin": admin, "retry_after": retry_after},
                status_code=status_code, headers=headers)
