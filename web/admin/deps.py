"""What the console's routes share: the admin behind a bearer token (the JSON twins) and
the status report (the Overview page and `GET /admin/api/overview`).

The admin gate is asked on every request rather than carried in the token, so revoking
`is_admin` takes effect at once, not when a token expires.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends
from starlette.concurrency import run_in_threadpool

from keysync.resources import Resources
from services.errors import Unauthorized
from services.ops.admins import require_admin
from services.ops.schemas import AdminView
from services.ops.snapshot import Sources, Thresholds
from services.ops.status import collect
from web.deps import OptionalUserIdDep, ResourcesDep


def _admin(resources: Resources, user_id: uuid.UUID) -> AdminView:
    with resources.sessions() as session:
        return require_admin(session, user_id)


async def admin_from_bearer(resources: ResourcesDep, user_id: OptionalUserIdDep) -> AdminView:
    """The admin behind `Authorization: Bearer <token>`: no token or a bad one is 401, a
    user who is not an admin 403."""
    if user_id is None:
        raise Unauthorized()
    # One primary-key read, off the event loop like every other database call.
    return await run_in_threadpool(_admin, resources, user_id)


BearerAdminDep = Annotated[AdminView, Depends(admin_from_bearer)]


def status_report(resources: Resources) -> dict[str, Any]:
    """Exactly what `keysync status --json` prints, read through this process's connections
    (so the console's numbers are the CLI's)."""
    sources = Sources(engine=resources.engine, sessions=resources.sessions,
                      cache_redis=resources.redis, broker_redis=resources.broker.client)
    thresholds = Thresholds(order_stuck_after_s=resources.settings.order_stuck_after_s)
    return collect(sources, thresholds=thresholds)
