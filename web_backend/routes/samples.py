"""Instant samples: "this character does not exist", straight from the generator."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import ValidationError

from ml_backend.protocol import MAX_SEED, GenerationRequest, Result, seed_to_int
from web_backend.deps import ServicesDep, limit_per_address
from web_backend.errors import ServiceUnavailable, Unprocessable, validation_detail
from web_backend.onnx_samples import SamplerBusy
from web_backend.openapi import PNG, refusals
from web_backend.services import Services

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
    cache = services.sample_cache
    if key is not None and key in cache:
        cache.move_to_end(key)
        return _png(cache[key], key[1], "hit")
    onnx = services.onnx_samples
    if onnx is not None and onnx.serves(model):  # on this CPU: no GPU needed, no queue
        try:
            rendered = await onnx.render(
                key[1] if key is not None else secrets.randbelow(MAX_SEED), psi)
        except SamplerBusy:
            raise ServiceUnavailable("too many instant samples are being drawn right now; "
                                     "try again in a second", retry_after_s=1) from None
        if key is not None:
            _remember(services, key, rendered.png)
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
        _remember(services, key, message.png)
    return _png(message.png, message.seed, "miss")


def _remember(services: Services, key: tuple[str, int, float | None], png: bytes) -> None:
    cache = services.sample_cache
    if services.settings.samples.cache_size:
        cache[key] = png
        while len(cache) > services.settings.samples.cache_size:
            cache.popitem(last=False)


def _png(data: bytes, seed: int, cache: str) -> Response:
    return Response(data, media_type="image/png",
                    headers={"X-Seed": str(seed), "X-Cache": cache,
                             "Cache-Control": "public, max-age=86400"})
