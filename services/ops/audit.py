"""The audit trail: one `admin_actions` row and one `event=admin_action` log line for every
operator action (CONTRACT §8), from the console or the CLI.

`record` adds the row inside the caller's transaction, so the action and its record commit
together (or not at all); `announce` logs it once that transaction has committed, so the
log never reports an action that was rolled back.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import AdminAction
from services.ops.errors import OpsInputError
from services.ops.schemas import AdminActionList, AdminActionView

log = structlog.get_logger(__name__)

# Detail lists (ids acted on) are cut here; the count is always complete.
MAX_DETAIL_IDS = 100


def check_actor(actor: str) -> str:
    """The admin's email, or `cli:<os user>`: never empty, never unbounded."""
    actor = actor.strip()
    if not actor or len(actor) > 320:
        raise OpsInputError("an operator action needs an actor (1..320 characters)")
    return actor


def record(session: Session, *, actor: str, action: str, target: str,
           detail: dict[str, Any] | None = None) -> AdminAction:
    """Inside the caller's transaction: the row for one operator action."""
    row = AdminAction(actor=check_actor(actor), action=action, target=target[:2000],
                      detail=dict(detail or {}))
    session.add(row)
    session.flush()
    return row


def announce(row: AdminAction) -> None:
    """After commit: the one log line of the action."""
    log.info("admin_action", actor=row.actor, action=row.action, target=row.target,
             admin_action_id=row.id, detail=row.detail)


def ids_detail(ids: list[str]) -> dict[str, Any]:
    """The ids an action touched, for its detail: at most MAX_DETAIL_IDS of them."""
    return {"ids": ids[:MAX_DETAIL_IDS], "ids_truncated": len(ids) > MAX_DETAIL_IDS}


def list_actions(session: Session, *, limit: int = 50, offset: int = 0) -> AdminActionList:
    """The trail, newest first (the console's Audit page)."""
    rows = session.scalars(
        select(AdminAction).order_by(AdminAction.created_at.desc(), AdminAction.id.desc())
        .offset(offset).limit(limit)
    ).all()
    total = session.scalar(select(func.count()).select_from(AdminAction)) or 0
    return AdminActionList(
        items=[AdminActionView(id=r.id, actor=r.actor, action=r.action, target=r.target,
                               detail=r.detail, created_at=r.created_at) for r in rows],
        total=int(total),
    )
