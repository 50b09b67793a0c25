"""The operations console at `/admin` (CONTRACT §8): server-rendered pages for people
(`pages`, signed in with a session cookie) and their JSON twins for scripts (`api`, an
admin's bearer token). Both call the same `services.ops` functions."""

from __future__ import annotations

from fastapi import APIRouter

from web.admin import api, pages

router = APIRouter()
router.include_router(api.router)
router.include_router(pages.router)
