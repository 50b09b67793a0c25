"""Endpoints: webhooks (CONTRACT §5)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
