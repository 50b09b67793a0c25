"""Cache key builders and TTLs of CONTRACT §7: the only place key strings are spelled.

Ids are inserted verbatim into keys but glob-escaped inside patterns, so an id holding
`*`, `?` or `[` can never widen an invalidation to other keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MINUTE = 60
HOUR = 60 * MINUTE

GAME_TTL = HOUR
USER_CART_TTL = 30 * MINUTE
WISHLIST_TTL = HOUR
SESSION_TTL = 24 * HOUR
ORDER_TTL = 15 * MINUTE
USER_ORDERS_TTL = 30 * MINUTE
TRANSACTIONS_TTL = 15 * MINUTE
LIST_TTL = 15 * MINUTE

# Pattern families invalidated as a whole. Keys under these prefixes are indexed in a tag
# set when written, so invalidating the family costs O(keys removed), not a keyspace scan.
GAMES_LIST_PREFIX = "games:list:"
HOME_PREFIX = "home:"
CATALOG_PREFIX = "catalog:"
FAMILIES = (GAMES_LIST_PREFIX, HOME_PREFIX, CATALOG_PREFIX)
CATALOG_PATTERNS = tuple(prefix + "*" for prefix in FAMILIES)

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def glob_escape(value: object) -> str:
    """Escape Redis glob metacharacters so `value` matches only itself in a MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", str(value))


def game(game_id: object) -> str:
    return f"game:{game_id}"


def games_list(params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"{GAMES_LIST_PREFIX}{digest[:32]}"


def user_cart(user_id: object) -> str:
    return f"user:{user_id}:cart"


def user_wishlist(user_id: object) -> str:
    return f"user:{user_id}:wishlist"


def user_orders(user_id: object) -> str:
    return f"user:{user_id}:orders"


def user_transactions(user_id: object) -> str:
    return f"user:{user_id}:transactions"


def order(order_id: object) -> str:
    return f"order:{order_id}"


def session_cart(session_id: object) -> str:
    return f"session:{session_id}:cart"


def session_wishlist(session_id: object) -> str:
    return f"session:{session_id}:wishlist"


def user_pattern(user_id: object) -> str:
    """Every cache key of one user (used when a user's whole view must go)."""
    return f"user:{glob_escape(user_id)}:*"


def session_pattern(session_id: object) -> str:
    return f"session:{glob_escape(session_id)}:*"


def family_of(key_or_pattern: str) -> str | None:
    """The indexed family a key belongs to, or that a `prefix*` pattern names exactly."""
    for prefix in FAMILIES:
        if key_or_pattern.startswith(prefix):
            return prefix
    return None
