"""Endpoints: auth (CONTRACT §5): register and login.

Login is rate limited per client address and per email (429 with `Retry-After`), and both
routes hash passwords in the process's bounded hashing slots (503 with `Retry-After` when
none frees up within a short wait): see `services.accounts.passwords` and `.rate_limit`.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.accounts import auth
from services.accounts.schemas import AuthView, Credentials, LoginView, RegisterIn, UserView
from web.deps import ClientAddressDep, GuestSessionIdDep, LoginLimitsDep, ResourcesDep
from web.errors import error_responses

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=201,
    response_model=AuthView,
    responses=error_responses(409, 503),
)
def register(body: RegisterIn, resources: ResourcesDep) -> AuthView:
    result = auth.register(
        resources.sessions,
        resources.broker,
        resources.settings,
        email=body.email,
        password=body.password,
        name=body.name,
    )
    return AuthView(user=UserView.model_validate(result.user), token=result.token)


@router.post("/login", response_model=LoginView, responses=error_responses(401, 429, 503))
def login(
    body: Credentials,
    resources: ResourcesDep,
    session_id: GuestSessionIdDep,
    limits: LoginLimitsDep,
    address: ClientAddressDep,
) -> LoginView:
    result = auth.login(
        resources.sessions,
        resources.cache,
        resources.broker,
        resources.settings,
        email=body.email,
        password=body.password,
        session_id=session_id,
        limits=limits,
        client_address=address,
    )
    return LoginView(
        user=UserView.model_validate(result.user), token=result.token, migration=result.migration
    )
