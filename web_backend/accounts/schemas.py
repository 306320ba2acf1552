"""Bodies of the account routes: registering, signing in, tokens, limits, passwords."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from ml_backend.text import plain_text
from web_backend.core.schemas import UTCDatetime

__all__ = ["USERNAME_PATTERN", "AccountDeletion", "ApiKeyCreate", "ApiKeyCreated", "ApiKeyOut",
           "Limits",
           "LimitsUpdate", "PasswordChange", "RefreshRequest", "SignInForm", "TokenPair",
           "UserCreate", "UserDetail", "UserOut"]

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"username": "alice", "email": "alice@example.com", "password": "correct horse"}]})

    username: str = Field(pattern=USERNAME_PATTERN, description="3-32 of A-Z a-z 0-9 _ . -")
    email: EmailStr = Field(max_length=254, description="Checked by email-validator.")
    password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    is_admin: bool
    is_active: bool
    created_at: UTCDatetime


class Limits(BaseModel):
    submissions_per_minute: int
    max_active_jobs: int
    daily_images: int


class UserDetail(UserOut):
    limits: Limits
    api_keys: int | None = Field(None, description=(
        "How many API keys the account has (revoked ones not counted)."))
    storage_bytes: int | None = Field(None, description=(
        "Bytes of pictures, previews and image prompts the account's jobs keep (a picture "
        "two of its jobs share counts once)."))


class AccountDeletion(BaseModel):
    """Deleting your account: your password confirms it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"password": "correct horse"}]})

    password: str = Field(min_length=1, max_length=1024)


class LimitsUpdate(BaseModel):
    """null resets a limit to the service default."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"submissions_per_minute": 30, "max_active_jobs": 4, "daily_images": None}]})

    submissions_per_minute: int | None = Field(None, ge=1, le=10_000)
    max_active_jobs: int | None = Field(None, ge=1, le=1000)
    daily_images: int | None = Field(None, ge=1, le=1_000_000)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"current_password": "correct horse", "new_password": "battery staple"}]})

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"refresh_token": "r1.4f0c…"}]})

    refresh_token: str = Field(min_length=1, max_length=512)


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int
    refresh_token: str


class SignInForm(BaseModel):
    """The OAuth2 password grant as a form (what Swagger's "Authorize" and OAuth2
    libraries send); extra OAuth2 fields (scope, client_id) are accepted and ignored."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"username": "alice", "password": "correct horse"}]})

    grant_type: str | None = Field(None, pattern="^password$")
    username: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


KeyScope = Literal["jobs:read", "jobs:write"]
_ALL_SCOPES: tuple[KeyScope, ...] = ("jobs:read", "jobs:write")


class ApiKeyCreate(BaseModel):
    """A new API key for a program: what it may do, and for how long."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "discord bot", "scopes": ["jobs:read", "jobs:write"], "expires_in_days": 90}]})

    name: str = Field(min_length=1, max_length=64, description="To recognise it by.")
    scopes: list[KeyScope] = Field(default_factory=lambda: list(_ALL_SCOPES),
                                   min_length=1, max_length=2, description=(
        "jobs:read (see jobs, pictures, events), jobs:write (submit, cancel). Never "
        "account or administration changes."))
    expires_in_days: int | None = Field(None, ge=1, le=3650, description=(
        "Days until it stops working; null: until revoked."))
    rate_per_minute: int | None = Field(None, ge=1, le=100_000, description=(
        "Pictures per minute this key may submit, within the account's own limit."))

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str) -> str:
        name = plain_text(name).strip()
        if not name:
            raise ValueError("name must not be blank")
        return name


class ApiKeyOut(BaseModel):
    """An API key as listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell which one it is.")
    scopes: list[str]
    created_at: UTCDatetime
    expires_at: UTCDatetime | None
    last_used_at: UTCDatetime | None = Field(description=(
        "Within a minute or so: it is written at most once a minute."))
    rate_per_minute: int | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description=(
        "The key itself, shown only now: send it as 'Authorization: Bearer <key>'. "
        "Only its hash is kept; lose it and make a new one."))
