"""Database layer: typed models, engine/session factory, Alembic migrations; no business logic."""
