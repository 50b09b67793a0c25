"""Cache key builders and TTLs of CONTRACT §7: the only place key strings are spelled.

Ids are inserted verbatim into keys but glob-escaped inside patterns, so an id holding
`*`, `?` or `[` can never widen an invalidation to other keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping

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


def _key(template: str) -> Callable[[object], str]:
    """A builder of one key: `template` with the id in place of `{}`."""
    return lambda id_: template.format(id_)


def _pattern(template: str) -> Callable[[object], str]:
    """A builder of one pattern: `template` with the glob-escaped id in place of `{}`."""
    return lambda id_: template.format(glob_escape(id_))


game = _key("game:{}")
user_cart = _key("user:{}:cart")
user_wishlist = _key("user:{}:wishlist")
user_orders = _key("user:{}:orders")
user_transactions = _key("user:{}:transactions")
order = _key("order:{}")
session_cart = _key("session:{}:cart")
session_wishlist = _key("session:{}:wishlist")
# Every cache key of one user / guest session (when their whole view must go).
user_pattern = _pattern("user:{}:*")
session_pattern = _pattern("session:{}:*")


def games_list(params: Mapping[str, str | int]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    return f"{GAMES_LIST_PREFIX}{digest[:32]}"


def family_of(key_or_pattern: str) -> str | None:
    """The indexed family a key belongs to, or that a `prefix*` pattern names exactly."""
    for prefix in FAMILIES:
        if key_or_pattern.startswith(prefix):
            return prefix
    return None
