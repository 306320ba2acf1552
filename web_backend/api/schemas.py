"""Bodies that belong to the API itself: refusals, health, readiness, the model list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Detail", "FieldError", "Health", "ModelInfo", "ModelList", "Readiness"]


class FieldError(BaseModel):
    """One invalid field: where, what is wrong, and a stable machine-readable type."""

    loc: list[str | int]
    msg: str
    type: str


class Detail(BaseModel):
    """Every refusal: a sentence saying what to fix, or one entry per invalid field."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "not signed in: send 'Authorization: Bearer <access token>'"},
        {"detail": [{"loc": ["body", "steps"], "msg": "Input should be less than or equal "
                     "to 500", "type": "less_than_equal"}]}]})

    detail: str | list[FieldError]


class Health(BaseModel):
    status: Literal["ok", "stalled"]
    detail: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description=(
        "database, ml and (when configured) redis: ok, down or unreachable."))


class ModelInfo(BaseModel):
    description: str
    default_psi: float
    resolution: int
    parameters: int
    demo_weights: bool = Field(description="Untrained built-in weights: noise, not pictures.")
    format: str = Field(description="The checkpoint format the weights were read from.")


class ModelList(BaseModel):
    models: dict[str, ModelInfo]
    upscaler: str | None = Field(description="How upscale 2/4 is done.")
