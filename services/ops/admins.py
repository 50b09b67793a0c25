"""Who may use the operations console: `users.is_admin`, granted and revoked with an audit
row (`keysync user create --admin`, `keysync user admin EMAIL [--revoke]`)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from services.accounts.auth import lock_user
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
