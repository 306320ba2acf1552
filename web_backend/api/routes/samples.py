"""Instant samples: "this character does not exist", straight from the generator."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import ValidationError

from ml_backend.protocol import MAX_SEED, GenerationRequest, Result, seed_to_int
from web_backend.api.deps import ServicesDep, limit_per_address
from web_backend.api.errors import validation_detail
from web_backend.api.openapi import PNG, refusals
from web_backend.core.errors import ServiceUnavailable, Unprocessable
from web_backend.samples.onnx import SamplerBusy

__all__ = ["router"]

router = APIRouter(tags=["samples"])

_SAMPLES = limit_per_address(
    "sample", lambda s: s.samples.per_minute, per="minute",
    message="at most {limit} samples per minute; try again in {retry} s")


@router.get("/v1/sample.png", name="get", response_class=Response, dependencies=[_SAMPLES],
            responses={**PNG, **refusals(422, 429, 503, described={
                503: "The image service is not reachable right now."})})
async def sample_png(
    services: ServicesDep,
    seed: Annotated[str | None, Query(min_length=1, max_length=64, description=(
        "A number or a name: the same name is always the same character."))] = None,
    psi: Annotated[float | None, Query(ge=0, le=2, description="Creativity, 0-2.")] = None,
    model: Annotated[str, Query(min_length=1, max_length=64,
                                pattern=r"^[A-Za-z0-9_.-]+$")] = "default",
) -> Response:
    """A random character in one generator pass, no queue (rate-limited per address)."""
    key = (model, seed_to_int(seed), psi) if seed is not None else None
    cached = services.sample_cache.get(key) if key is not None else None
    if key is not None and cached is not None:
        return _png(cached, key[1], "hit")
    onnx = services.onnx_samples
    if onnx is not None and onnx.serves(model):  # on this CPU: no GPU needed, no queue
        try:
            rendered = await onnx.render(
                key[1] if key is not None else secrets.randbelow(MAX_SEED), psi)
        except SamplerBusy:
            raise ServiceUnavailable("too many instant samples are being drawn right now; "
                                     "try again in a second", retry_after_s=1) from None
        if key is not None:
            services.sample_cache.put(key, rendered.png)
        return _png(rendered.png, rendered.seed, "miss")
    try:
        body = GenerationRequest(seed=seed, psi=psi, model=model)
    except ValidationError as exc:
        raise Unprocessable(validation_detail(exc)) from None
    message = await services.ml.sample(body)
    if not isinstance(message, Result):
        if message.code == "invalid_request":
            raise Unprocessable(message.message)
        raise ServiceUnavailable(f"the image service is not reachable right now "
                                 f"({message.message})", retry_after_s=10)
    if key is not None:
        services.sample_cache.put(key, message.png)
    return _png(message.png, message.seed, "miss")


def _png(data: bytes, seed: int, cache: str) -> Response:
    return Response(data, media_type="image/png",
                    headers={"X-Seed": str(seed), "X-Cache": cache,
                             "Cache-Control": "public, max-age=86400"})
