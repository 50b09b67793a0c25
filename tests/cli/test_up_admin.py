"""The development admin of `keysync up` (keysync.devstack.dev_admin) on the real database:
created on the first start with a random password that signs in to the console, kept in the
data dir (0600), never replaced by a later start."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.models import AdminAction, User
from keysync.devstack.dev_admin import ADMIN_FILE, DEV_ADMIN_EMAIL, announce_lines, ensure_dev_admin
from services.accounts.auth import authenticate


def test_first_start_creates_an_admin_later_starts_say_where_it_is(
        tmp_path: Path, database_url: str, sessions: Any) -> None:
    first = ensure_dev_admin(tmp_path, database_url)
    assert first.password and first.email == DEV_ADMIN_EMAIL
    path = tmp_path / ADMIN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"email": DEV_ADMIN_EMAIL, "password": first.password}
    user = authenticate(sessions, email=DEV_ADMIN_EMAIL, password=first.password)
    assert user.is_admin
    with sessions() as s:
        [grant] = s.scalars(select(AdminAction)).all()
    assert (grant.action, grant.actor, grant.target) == (
        "admin.grant", "cli:keysync-up", DEV_ADMIN_EMAIL)
    shown = "\n".join(announce_lines(first, "http://127.0.0.1:8000/admin"))
    assert "http://127.0.0.1:8000/admin" in shown and first.password in shown

    path.chmod(0o644)
    again = ensure_dev_admin(tmp_path, database_url)
    assert again.password is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    later = "\n".join(announce_lines(again, "http://127.0.0.1:8000/admin"))
    assert first.password not in later and str(path) in later
    with sessions() as s:
        assert s.scalar(select(User.is_admin).where(User.email == DEV_ADMIN_EMAIL)) is True
        assert len(s.scalars(select(User)).all()) == 1


def test_a_lost_file_never_resets_the_existing_admin(
        tmp_path: Path, database_url: str, sessions: Any) -> None:
    first = ensure_dev_admin(tmp_path, database_url)
    assert first.password
    (tmp_path / ADMIN_FILE).unlink()
    again = ensure_dev_admin(tmp_path, database_url)
    assert again.password is None and again.note and "keysync user create" in again.note
    assert authenticate(sessions, email=DEV_ADMIN_EMAIL, password=first.password).is_admin
    assert not (tmp_path / ADMIN_FILE).exists()
