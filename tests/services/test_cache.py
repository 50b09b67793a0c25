"""Cache service against a real Redis (T008) and a really unreachable one (T048)."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select

from db.models import CacheInvalidation
from services.cache import Cache, CacheOutbox, keys, make_cache_redis


def test_set_get_and_ttls(cache: Cache, redis_client) -> None:
    game_id = uuid.uuid4()
    assert cache.set(keys.game(game_id), {"price": "1.00"}, keys.GAME_TTL)
    assert cache.get(keys.game(game_id)) == {"price": "1.00"}
    assert 3590 <= redis_client.ttl(keys.game(game_id)) <= keys.GAME_TTL
    cache.read_through(keys.session_cart("s1"), keys.SESSION_TTL, lambda: {"items": []})
    assert redis_client.ttl(keys.session_cart("s1")) > keys.SESSION_TTL - 10
    assert keys.ORDER_TTL == 15 * 60 and keys.USER_CART_TTL == 30 * 60
    assert keys.WISHLIST_TTL == 3600 and keys.USER_ORDERS_TTL == 30 * 60
    assert keys.TRANSACTIONS_TTL == 15 * 60 and keys.SESSION_TTL == 24 * 3600


def test_single_key_invalidation_removes_only_that_key(cache: Cache, redis_client) -> None:
    cache.set("game:a", 1, 60)
    cache.set("game:b", 2, 60)
    assert cache.invalidate(["game:a"]) == 1
    assert redis_client.exists("game:a") == 0
    assert cache.get("game:b") == 2
    assert cache.invalidate(["game:a"]) == 0  # idempotent


@pytest.mark.parametrize("family", ["catalog:", "home:", "games:list:"])
def test_family_pattern_removes_exactly_matching_keys(cache: Cache, redis_client, family) -> None:
    for i in range(120):
        cache.set(f"{family}{i}", i, 600)
    redis_client.set("catalogue:other", 1)  # shares a prefix with catalog but is not in it
    cache.set("game:1", 1, 600)
    assert cache.invalidate_pattern(family + "*") == 120
    assert not list(redis_client.scan_iter(match=family + "*"))
    assert redis_client.exists("catalogue:other", "game:1") == 2


def test_pattern_with_glob_characters_in_ids_is_escaped(cache: Cache, redis_client) -> None:
    tricky = ["a*b", "a?c", "a[b]c", "a\\d"]
    for uid in [*tricky, "aXb", "abc", "ab"]:
        cache.set(keys.user_cart(uid), uid, 600)
        cache.set(keys.user_orders(uid), uid, 600)
    for uid in tricky:
        assert cache.invalidate_pattern(keys.user_pattern(uid)) == 2, uid
    remaining = sorted(k.decode() for k in redis_client.scan_iter(match="user:*"))
    assert remaining == sorted(
        [keys.user_cart(u) for u in ("aXb", "abc", "ab")]
        + [keys.user_orders(u) for u in ("aXb", "abc", "ab")]
    )


def test_glob_escape_against_redis_match(cache: Cache, redis_client) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.text(alphabet="ab*?[]\\^-", min_size=1, max_size=6),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    def only_the_escaped_id_matches(ids: list[str]) -> None:
        redis_client.flushdb()
        for uid in ids:
            redis_client.set(keys.session_cart(uid), 1)
        target = ids[0]
        matched = {k.decode() for k in redis_client.scan_iter(match=keys.session_pattern(target))}
        assert matched == {keys.session_cart(target)}

    only_the_escaped_id_matches()


def test_read_through_loads_once_then_hits(cache: Cache) -> None:
    calls = []

    def load() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert cache.read_through("order:1", 60, load) == {"n": 1}
    assert cache.read_through("order:1", 60, load) == {"n": 1}
    assert len(calls) == 1


def test_read_through_race_does_not_store_stale_value(cache: Cache, redis_client) -> None:
    """A value computed before an invalidation must not be stored after it."""
    loading = threading.Event()
    invalidated = threading.Event()

    def slow_stale_load() -> dict[str, str]:
        loading.set()
        assert invalidated.wait(5)
        return {"status": "PENDING"}  # what Postgres said before the writer committed

    reader = threading.Thread(target=lambda: cache.read_through("order:9", 60, slow_stale_load))
    reader.start()
    assert loading.wait(5)
    cache.invalidate(["order:9"])  # the writer committed COMPLETED and invalidated
    invalidated.set()
    reader.join(5)
    assert redis_client.get("order:9") is None
    assert cache.read_through("order:9", 60, lambda: {"status": "COMPLETED"}) == {
        "status": "COMPLETED"
    }


def test_read_through_race_with_family_invalidation(cache: Cache, redis_client) -> None:
    loading, invalidated = threading.Event(), threading.Event()
    key = keys.games_list({"page": 1})

    def slow_load() -> list[str]:
        loading.set()
        assert invalidated.wait(5)
        return ["stale"]

    reader = threading.Thread(target=lambda: cache.read_through(key, 60, slow_load))
    reader.start()
    assert loading.wait(5)
    cache.invalidate_pattern("games:list:*")
    invalidated.set()
    reader.join(5)
    assert redis_client.get(key) is None


def _outbox_rows(sessions) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(CacheInvalidation)))


def test_redis_down_reads_fall_back_and_invalidations_go_to_outbox(
    sessions, dead_redis_url: str, redis_url: str, redis_client
) -> None:
    # The live Redis holds a value that becomes stale while "our" Redis is unreachable.
    live = Cache(make_cache_redis(redis_url), CacheOutbox(sessions))
    assert live.read_through("game:g1", 60, lambda: {"price": "10.00"}) == {"price": "10.00"}

    calls = {"n": 0}

    # Count the calls that reach the dead server's socket (they really go to a closed port).
    dead_client = make_cache_redis(dead_redis_url)
    original = dead_client.execute_command

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    dead_client.execute_command = counting  # type: ignore[method-assign]
    down = Cache(dead_client, CacheOutbox(sessions), fail_max=3, reset_timeout_s=60)

    # Reads come from the loader (Postgres), writes are skipped, nothing raises.
    for i in range(50):
        assert down.read_through("game:g1", 60, lambda: {"price": "12.00"}) == {"price": "12.00"}
        assert down.get(f"game:{i}") is None
        assert down.set(f"game:{i}", 1, 60) is False
    down.invalidate(["game:g1"])
    down.invalidate_pattern("catalog:*")
    assert down.degraded
    # Circuit breaker: after 3 failures no call reaches the dead server any more.
    assert calls["n"] <= 3
    assert _outbox_rows(sessions) == 2

    # Redis is back (the same data the outage left behind): replay removes the stale entry.
    assert redis_client.get("game:g1") is not None
    assert live.replay_outbox() == 2
    assert redis_client.get("game:g1") is None
    assert _outbox_rows(sessions) == 0


def test_recovering_cache_replays_outbox_before_serving_reads(
    sessions, redis_url: str, redis_client
) -> None:
    cache = Cache(make_cache_redis(redis_url), CacheOutbox(sessions), reset_timeout_s=0.01)
    cache.read_through("order:o1", 60, lambda: {"status": "PENDING"})
    # Another process recorded an invalidation while Redis was unreachable to it.
    CacheOutbox(sessions).record(["order:o1"], is_pattern=False)
    fresh = Cache(make_cache_redis(redis_url), CacheOutbox(sessions))
    # A new process replays before trusting Redis: it sees the committed state.
    assert fresh.read_through("order:o1", 60, lambda: {"status": "COMPLETED"}) == {
        "status": "COMPLETED"
    }
    assert _outbox_rows(sessions) == 0


def test_cache_without_outbox_never_raises(dead_redis_url: str) -> None:
    cache = Cache(make_cache_redis(dead_redis_url), None)
    assert cache.read_through("k", 1, lambda: 5) == 5
    assert cache.invalidate(["k"]) == 0


def test_outbox_replay_invalidates_like_a_live_call(sessions, redis_url: str,
                                                    redis_client) -> None:
    """Replay runs the same invalidation as `invalidate`/`invalidate_pattern`: exact keys,
    indexed families and scanned patterns go, and their generations move, so a read that
    loaded before the replay cannot write its value back after it."""
    cache = Cache(make_cache_redis(redis_url), CacheOutbox(sessions))
    cache.replay_outbox()  # nothing pending: the cache is usable
    for key in ("catalog:home", "user:u1:cart", "user:u1:orders", "user:u2:cart"):
        cache.set(key, {"v": 1}, 60)
    outbox = CacheOutbox(sessions)
    outbox.record(["game:g1", "game:g1"], is_pattern=False)
    outbox.record(["catalog:*", keys.user_pattern("u1")], is_pattern=True)

    def loader() -> dict[str, int]:
        # Loaded from "Postgres" before the invalidation lands: must not be stored.
        assert cache.replay_outbox() == 4
        return {"v": 1}

    assert cache.read_through("game:g1", 60, loader) == {"v": 1}
    assert [redis_client.exists(k) for k in
            ("game:g1", "catalog:home", "user:u1:cart", "user:u1:orders", "user:u2:cart")] == [
        0, 0, 0, 0, 1]
    assert _outbox_rows(sessions) == 0
