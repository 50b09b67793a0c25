"""The development admin `keysync up` creates on its first start, so a newcomer can sign in
to the operations console at once.

The password is random, printed once (with the console's URL) and kept in
KEYSYNC_DATA_DIR/dev-admin.json (mode 0600); later starts print where it is instead of a
new one. The grant is audited like any other (`admin.grant`, actor `cli:keysync-up`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from db.session import make_engine, make_session_factory
from keysync.devstack.dev_secrets import write_private
from services.accounts.auth import EmailTaken, create_user
from services.ops.admins import set_admin

ADMIN_FILE = "dev-admin.json"
DEV_ADMIN_EMAIL = "admin@keysync.local"
ACTOR = "cli:keysync-up"


@dataclass(frozen=True)
class DevAdmin:
    email: str
    path: Path
    password: str | None  # only on the start that created it
    note: str | None = None  # why there is no usable password, if there is none


def ensure_dev_admin(data_dir: Path, database_url: str) -> DevAdmin:
    """The development admin, created (and its file written) when the data dir has none."""
    path = data_dir / ADMIN_FILE
    if path.exists():
        path.chmod(0o600)  # whoever loosened it, the file holds a live password
        email = str(json.loads(path.read_text()).get("email", DEV_ADMIN_EMAIL))
        return DevAdmin(email=email, path=path, password=None)
    password = secrets.token_urlsafe(12)
    engine = make_engine(database_url, pool_size=1, application_name="keysync-up")
    try:
        sessions = make_session_factory(engine)
        try:
            create_user(sessions, email=DEV_ADMIN_EMAIL, password=password, name="Dev admin")
        except EmailTaken:
            # The database outlived the data dir's file: the password is unknown here.
            set_admin(sessions, email=DEV_ADMIN_EMAIL, admin=True, actor=ACTOR)
            return DevAdmin(email=DEV_ADMIN_EMAIL, path=path, password=None, note=(
                f"{DEV_ADMIN_EMAIL} already exists but {path} is gone; create another admin "
                "with `keysync user create EMAIL --password P --admin`"))
        set_admin(sessions, email=DEV_ADMIN_EMAIL, admin=True, actor=ACTOR)
    finally:
        engine.dispose()
    write_private(path, json.dumps({"email": DEV_ADMIN_EMAIL, "password": password},
                                   indent=2) + "\n")
    return DevAdmin(email=DEV_ADMIN_EMAIL, path=path, password=password)


def announce_lines(admin: DevAdmin, console_url: str) -> list[str]:
    """What `keysync up` prints about the console once the web process listens."""
    lines = [f"  console    {console_url}"]
    if admin.password is not None:
        lines.append(f"             sign in as {admin.email} / {admin.password}  (shown once; "
                     f"kept in {admin.path}, mode 0600)")
    elif admin.note is not None:
        lines.append(f"             {admin.note}")
    else:
        lines.append(f"             sign in as {admin.email}; the password is in {admin.path}")
    return lines
