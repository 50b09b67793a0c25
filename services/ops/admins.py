"""Who may use the operations console: `users.is_admin`, granted and revoked with an audit
row (`keysync user create --admin`, `keysync user admin EMAIL [--revoke]`)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from db.models import User
from services.accounts.auth import lock_user
from services.errors import Forbidden, Unauthorized
from services.ops import audit
from services.ops.schemas import AdminView


def set_admin(sessions: sessionmaker[Session], *, email: str, admin: bool,
              actor: str) -> AdminView:
    """Grant (or revoke) the console to the user with `email`; the audit row is written
    even when nothing changes, since it records what the operator asked for."""
    actor = audit.check_actor(actor)
    with sessions() as session, session.begin():
        user = lock_user(session, email)
        changed = user.is_admin != admin
        user.is_admin = admin
        row = audit.record(session, actor=actor,
                           action="admin.grant" if admin else "admin.revoke",
                           target=user.email,
                           detail={"user_id": str(user.id), "changed": changed})
        view = AdminView(id=user.id, email=user.email, is_admin=user.is_admin)
    audit.announce(row)
    return view


def require_admin(session: Session, user_id: uuid.UUID) -> AdminView:
    """The console's gate, asked on every request (a revoked admin is out at once): the
    user behind a valid token or cookie, if they are an admin. Unknown user: Unauthorized
    (401, sign in again); known but not an admin: Forbidden (403)."""
    user = session.get(User, user_id)
    if user is None:
        raise Unauthorized("This account no longer exists.")
    if not user.is_admin:
        raise Forbidden("The operations console is for admins.")
    return AdminView(id=user.id, email=user.email, is_admin=True)
