"""Actors: orders."""

from __future__ import annotations
