"""Endpoints: auth (CONTRACT §5): register and login."""

from __future__ import annotations

from fastapi import APIRouter

from services.accounts import auth
from services.accounts.schemas import AuthView, Credentials, LoginView, RegisterIn, UserView
from web.deps import GuestSessionIdDep, ResourcesDep
from web.errors import error_responses

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=201,
    response_model=AuthView,
    responses=error_responses(409),
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


@router.post("/login", response_model=LoginView, responses=error_responses(401))
def login(body: Credentials, resources: ResourcesDep, session_id: GuestSessionIdDep) -> LoginView:
    result = auth.login(
        resources.sessions,
        resources.cache,
        resources.broker,
        resources.settings,
        email=body.email,
        password=body.password,
        session_id=session_id,
    )
    return LoginView(
        user=UserView.model_validate(result.user), token=result.token, migration=result.migration
    )
