"""The bodies of the OpenAI Images API, as clipgan speaks it (``/openai/v1``).

OpenAI's own names and shapes, so its SDKs and the clients built on them (Open WebUI,
LibreChat...) work with a base URL and an API key; clipgan's own controls come as extra
fields (``extra_body`` in the SDK). Parameters OpenAI defines that mean nothing here are
accepted where ignoring them is harmless (``quality``, ``style``, ``user``...) and
refused where ignoring them would give a picture the caller did not ask for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ml_backend.protocol import MAX_PROMPT_CHARS

__all__ = ["ImageData", "ImageGenerationRequest", "ImagesResponse", "OpenAIError",
           "OpenAIErrorBody", "OpenAIModel", "OpenAIModelList"]


class ImageGenerationRequest(BaseModel):
    """``POST /openai/v1/images/generations``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "default", "prompt": "a girl with silver hair, smiling", "n": 1,
         "size": "auto", "response_format": "b64_json"}]})

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description=(
        "What the picture should show ('a:1 | b:-0.5' weights parts)."))
    model: str | None = Field(None, max_length=64, description=(
        "One of GET /openai/v1/models; default: the default model."))
    n: int | None = Field(1, ge=1, le=16, description="Pictures, each its own job.")
    size: str | None = Field(None, max_length=16, description=(
        "'auto', or WxH with W = H = the model's resolution times 1, 2 or 4."))
    response_format: Literal["url", "b64_json"] | None = Field(None, description=(
        "'url' (default): a signed link; 'b64_json': the PNG in the answer."))
    output_format: Literal["png"] | None = Field(None, description="PNG only.")
    background: Literal["auto", "opaque"] | None = None
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")
    user: str | None = Field(None, max_length=256, description="Accepted, not used.")
    quality: str | None = Field(None, max_length=16, description="Accepted, not used.")
    style: str | None = Field(None, max_length=16, description="Accepted, not used.")
    moderation: str | None = Field(None, max_length=16, description="Accepted, not used.")
    safety_identifier: str | None = Field(None, max_length=256, description=(
        "Accepted, not used."))
    # clipgan's own, as extra body fields
    seed: int | str | None = Field(None, description="Integer or a name (clipgan).")
    steps: int | None = Field(None, ge=1, le=500, description="Search steps (clipgan).")
    creativity: float | None = Field(None, ge=0.0, le=2.0, description=(
        "Truncation psi, 0-2 (clipgan)."))
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description=(
        "What to avoid (clipgan)."))


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "clipgan"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str = Field(description="What went wrong, in words.")
    type: str = Field(description="invalid_request_error, authentication_error, "
                                  "permission_error, not_found_error, conflict_error, "
                                  "rate_limit_error or server_error.")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="A stable name for the error.")


class OpenAIError(BaseModel):
    """Every refusal under /openai/v1, in OpenAI's shape."""

    error: OpenAIErrorBody
