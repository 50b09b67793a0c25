"""`/admin`: the console's pages (CONTRACT §8), for an admin signed in with a cookie."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin", include_in_schema=False)
