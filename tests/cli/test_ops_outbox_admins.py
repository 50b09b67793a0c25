"""`keysync outbox relay`, `keysync user create --admin` and `keysync user admin [--revoke]`:
their effects, their JSON, their exit codes and their audit rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select

from db.models import CacheInvalidation, JobOutbox, User
from services import job_outbox
from tests.cli.ops_helpers import ACTOR, admin_actions, assert_one_audited, cli, cli_process


def test_relay_sends_the_job_outbox_and_replays_invalidations(
    sessions: Any, redis_client: Any
) -> None:
    with sessions() as s, s.begin():
        for n in range(3):
            job_outbox.stage(s, "send_email", f"user{n}@example.com", "subject", "body")
        s.execute(insert(CacheInvalidation), [
            {"target": "game:1", "is_pattern": False},
            {"target": "catalog:*", "is_pattern": True},
        ])
    redis_client.set("game:1", "stale")
    relayed = cli_process("outbox", "relay", "--json")
    assert relayed.code == 0, relayed.stderr
    assert relayed.json == {"jobs_sent": 3, "invalidations_applied": 2}
    assert redis_client.llen("dramatiq:default") == 3
    assert not redis_client.exists("game:1")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(JobOutbox)) == 0
        assert s.scalar(select(func.count()).select_from(CacheInvalidation)) == 0
    row = assert_one_audited(relayed, sessions, "outbox.relay")
    assert row.detail == {"jobs_sent": 3, "invalidations_applied": 2}

    empty = cli("outbox", "relay", "--json")
    assert empty.code == 0 and empty.json == {"jobs_sent": 0, "invalidations_applied": 0}
    human = cli("outbox", "relay")
    assert human.code == 0 and "jobs sent: 0" in human.stdout
    assert len(admin_actions(sessions)) == 3


def test_relay_with_the_broker_down_exits_5_and_sends_nothing(
    sessions: Any, dead_redis_url: str
) -> None:
    with sessions() as s, s.begin():
        job_outbox.stage(s, "send_email", "a@example.com", "subject", "body")
    run = cli_process("outbox", "relay", "--json", BROKER_URL=dead_redis_url)
    assert run.code == 5 and "unreachable" in run.stderr
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(JobOutbox)) == 1
    assert admin_actions(sessions) == []


def is_admin(sessions: Any, email: str) -> bool:
    with sessions() as s:
        return bool(s.scalar(select(User.is_admin).where(User.email == email)))


def test_admin_create_grant_and_revoke_are_audited(sessions: Any) -> None:
    plain = cli("user", "create", "plain@example.com", "--password", "password1", "--json")
    assert plain.code == 0 and plain.json["is_admin"] is False
    assert not is_admin(sessions, "plain@example.com") and admin_actions(sessions) == []

    created = cli_process("user", "create", "Ops@Example.com", "--password", "password1",
                          "--admin", "--json")
    assert created.code == 0, created.stderr
    assert created.json["email"] == "Ops@Example.com" and created.json["is_admin"] is True
    assert is_admin(sessions, "Ops@Example.com")
    row = assert_one_audited(created, sessions, "admin.grant")
    assert row.target == "Ops@Example.com" and row.detail["changed"] is True

    granted = cli_process("user", "admin", "PLAIN@example.com", "--json")
    assert granted.code == 0, granted.stderr
    assert set(granted.json) == {"id", "email", "is_admin"}
    assert granted.json["email"] == "plain@example.com" and granted.json["is_admin"] is True
    assert is_admin(sessions, "plain@example.com")

    revoked = cli_process("user", "admin", "plain@example.com", "--revoke", "--json")
    assert revoked.code == 0 and revoked.json["is_admin"] is False, revoked.stderr
    assert not is_admin(sessions, "plain@example.com")
    assert_one_audited(revoked, sessions, "admin.revoke")
    assert [(r.action, r.actor, r.target) for r in admin_actions(sessions)] == [
        ("admin.grant", ACTOR, "Ops@Example.com"),
        ("admin.grant", ACTOR, "plain@example.com"),
        ("admin.revoke", ACTOR, "plain@example.com"),
    ]

    unknown = cli("user", "admin", "ghost@example.com", "--json")
    assert unknown.code == 2 and "no user" in unknown.json["error"]
    assert len(admin_actions(sessions)) == 3
    assert cli("user", "admin").code == 2  # EMAIL missing
