"""``/v1/users``: ops manage people's accounts (scope ``ops``). Creating an account and resetting one
answer with a one-time set-password link, to hand to the person (it is not stored, only its hash)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from services.auth import users
from services.auth.deps import AuthStateDep
from services.auth.domain import AccountError, User
from shared.auth import Principal, Scope, require
from shared.problems import Conflict, NotFound, Unprocessable

router = APIRouter(prefix="/v1/users", tags=["users"])

Ops = Annotated[Principal, Depends(require(Scope.OPS))]


class UserCreate(BaseModel):
    email: str = Field(max_length=254, examples=["coordinator@site.example"])
    display_name: str = Field(max_length=200, examples=["Dana Coordinator"])
    role: Literal["coordinator", "ops"]
    site_codes: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)


class UserPublic(BaseModel):
    id: str
    email: str
    display_name: str
    role: str
    site_codes: list[str]
    disabled: bool
    has_password: bool
    totp_confirmed: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            role=user.role.value,
            site_codes=list(user.site_codes),
            disabled=user.disabled,
            has_password=user.has_password,
            totp_confirmed=user.totp_confirmed,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserWithLink(BaseModel):
    user: UserPublic
    set_password_url: str = Field(description="one-time link; give it to the person, it is not kept")
    expires_at: datetime


def _link(link: users.PasswordLink, base_url: str) -> UserWithLink:
    return UserWithLink(
        user=UserPublic.of(link.user), set_password_url=link.url(base_url), expires_at=link.expires_at
    )


@router.post("", status_code=201, summary="Create an account; answers its one-time set-password link")
async def create_user(body: UserCreate, auth: AuthStateDep, _: Ops) -> UserWithLink:
    try:
        link = await users.create_user(
            auth.db,
            email=body.email,
            display_name=body.display_name,
            role=body.role,
            site_codes=body.site_codes,
            link_lifetime_s=auth.settings.password_link_lifetime_s,
        )
    except AccountError as exc:
        raise Unprocessable(
            "the account is not valid", errors=[{"field": exc.field, "reason": exc.reason}]
        ) from exc
    except users.UserExists as exc:
        raise Conflict(str(exc)) from exc
    return _link(link, auth.settings.public_base)


@router.get("", summary="The accounts (never their passwords or TOTP secrets)")
async def list_users(auth: AuthStateDep, _: Ops) -> list[UserPublic]:
    return [UserPublic.of(u) for u in await users.list_users(auth.db)]


async def _set_disabled(auth: AuthStateDep, user_id: str, disabled: bool) -> UserPublic:
    try:
        return UserPublic.of(await users.set_disabled(auth.db, user_id, disabled))
    except users.UserNotFound as exc:
        raise NotFound("no such account") from exc


@router.post("/{user_id}/disable", summary="Disable an account: no sign-in, its sessions end now")
async def disable_user(
    user_id: Annotated[str, Path(max_length=254)], auth: AuthStateDep, _: Ops
) -> UserPublic:
    return await _set_disabled(auth, user_id, True)


@router.post("/{user_id}/enable", summary="Enable an account again")
async def enable_user(
    user_id: Annotated[str, Path(max_length=254)], auth: AuthStateDep, _: Ops
) -> UserPublic:
    return await _set_disabled(auth, user_id, False)


@router.post("/{user_id}/reset", summary="Forget the password and TOTP; answers a new set-password link")
async def reset_user(
    user_id: Annotated[str, Path(max_length=254)], auth: AuthStateDep, _: Ops
) -> UserWithLink:
    try:
        link = await users.reset(auth.db, user_id, link_lifetime_s=auth.settings.password_link_lifetime_s)
    except users.UserNotFound as exc:
        raise NotFound("no such account") from exc
    return _link(link, auth.settings.public_base)
