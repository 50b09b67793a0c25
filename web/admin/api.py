"""`/admin/api/*`: the console's JSON twins (CONTRACT §8), for an admin's bearer token."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/admin/api", tags=["admin"])
