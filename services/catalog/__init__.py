"""Catalog: the G2A catalog sync and stock check (listing, writing, runs)."""
