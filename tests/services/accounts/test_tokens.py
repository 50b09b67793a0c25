"""JWT: only unexpired, untampered HS256 tokens signed with our secret are accepted."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import jwt
import pytest

from services.accounts import tokens

SECRET = "s" * 40


def test_round_trip() -> None:
    uid = uuid.uuid4()
    assert tokens.verify(tokens.issue(uid, SECRET, 60), SECRET) == uid


def test_expired_token_is_rejected() -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(tokens.issue(uuid.uuid4(), SECRET, 60, now=past), SECRET)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(tokens.issue(uuid.uuid4(), SECRET, 60), "x" * 40)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_rejected() -> None:
    exp = int((dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).timestamp())
    unsigned = (
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': str(uuid.uuid4()), 'exp': exp})}."
    )
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(unsigned, SECRET)


def test_other_algorithm_is_rejected() -> None:
    token = jwt.encode(
        {"sub": str(uuid.uuid4()), "exp": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)},
        SECRET,
        algorithm="HS512",
    )
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(token, SECRET)


def test_tampered_payload_is_rejected() -> None:
    header, _, signature = tokens.issue(uuid.uuid4(), SECRET, 60).split(".")
    forged = _b64({"sub": str(uuid.uuid4()), "exp": 4_102_444_800})
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(f"{header}.{forged}.{signature}", SECRET)


def test_missing_claims_are_rejected() -> None:
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(jwt.encode({"sub": str(uuid.uuid4())}, SECRET, algorithm="HS256"), SECRET)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(
            jwt.encode({"sub": "not-a-uuid", "exp": 4_102_444_800}, SECRET, algorithm="HS256"),
            SECRET,
        )
