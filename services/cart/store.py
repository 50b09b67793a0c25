"""The owner-scoped item store a cart and a wishlist share.

Both are rows `(owner, game)` unique per owner, read as one cached view per owner and
changed one game at a time:
- `put` needs the owner to exist and the game to pass the store's rule (404 unknown, 409
  unavailable), then upserts on the owner's unique index, so two concurrent PUTs of the
  same game both succeed (the last one wins) instead of one failing on a duplicate;
- `delete` is always allowed and removing an absent game is a no-op;
- both invalidate the owner's key after commit and answer with the fresh view.
What differs (table, keys and TTLs, the game rule, the extra columns, the view) is data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import structlog
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from services.cache import Cache
from services.cart.owner import ItemModel, Owner
from services.games.service import Listed, load_game

log = structlog.get_logger(__name__)

ViewT = TypeVar("ViewT", bound=BaseModel)


def read_transaction(session: Session) -> AbstractContextManager[object]:
    """A short read transaction, or the caller's if one is open.

    Ending it right after the read hands the connection back to the pool and lets the same
    session run a write transaction next (a lingering autobegun one would refuse `begin()`).
    """
    return nullcontext() if session.in_transaction() else session.begin()


class CacheKeys(NamedTuple):
    """Where a store's views are cached, per kind of owner, and for how long."""

    user: Callable[[uuid.UUID], str]
    user_ttl_s: int
    guest: Callable[[str], str]
    guest_ttl_s: int


@dataclass(frozen=True)
class ItemStore(Generic[ViewT]):
    name: str  # for log lines: "cart", "wishlist"
    model: ItemModel
    load: Callable[[Session, Owner], ViewT]  # the owner's view from Postgres (no cache)
    view: type[ViewT]
    cache_keys: CacheKeys
    must_be: Callable[[Listed], bool]  # what a game must be to be added
    # Columns a second `put` of the same game overwrites; none: the second put is a no-op.
    update_on_conflict: tuple[str, ...] = ()

    def key(self, owner: Owner) -> str:
        if owner.user_id is not None:
            return self.cache_keys.user(owner.user_id)
        assert owner.session_id is not None
        return self.cache_keys.guest(owner.session_id)

    def ttl_s(self, owner: Owner) -> int:
        if owner.user_id is not None:
            return self.cache_keys.user_ttl_s
        return self.cache_keys.guest_ttl_s

    def get(self, session: Session, cache: Cache, owner: Owner) -> ViewT:
        def load() -> object:
            with read_transaction(session):
                return self.load(session, owner).model_dump(mode="json")

        cached = cache.read_through(self.key(owner), self.ttl_s(owner), load)
        return self.view.model_validate(cached)

    def put(
        self, session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID, **values: int
    ) -> ViewT:
        """Add `game_id` (with `values` for the extra columns); returns the new view."""
        columns, index_where = owner.index_target(self.model)
        with session.begin():
            owner.ensure_exists(session)
            load_game(session, game_id, must_be=self.must_be)
            statement = insert(self.model).values(**owner.values(), game_id=game_id, **values)
            if self.update_on_conflict:
                statement = statement.on_conflict_do_update(
                    index_elements=columns,
                    index_where=index_where,
                    set_={name: statement.excluded[name] for name in self.update_on_conflict},
                )
            else:
                statement = statement.on_conflict_do_nothing(
                    index_elements=columns, index_where=index_where
                )
            session.execute(statement)
        cache.invalidate([self.key(owner)])
        log.info(f"{self.name} item put", game_id=str(game_id), **values, **owner.log_context())
        return self.get(session, cache, owner)

    def delete(self, session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> ViewT:
        """Remove `game_id` (a no-op when absent); returns the new view."""
        with session.begin():
            session.execute(
                delete(self.model).where(owner.where(self.model), self.model.game_id == game_id)
            )
        cache.invalidate([self.key(owner)])
        log.info(f"{self.name} item removed", game_id=str(game_id), **owner.log_context())
        return self.get(session, cache, owner)

    def holders(self, session: Session, game_ids: list[uuid.UUID]) -> list[str]:
        """Cache keys of every owner holding one of `game_ids`."""
        rows = session.execute(
            select(self.model.user_id, self.model.session_id)
            .where(self.model.game_id.in_(game_ids))
            .distinct()
        ).all()
        return [self.key(Owner(user_id=u, session_id=s)) for u, s in rows]
