"""Instant samples: "this character does not exist", straight from the generator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from ml_backend.protocol import GenerationRequest, Result, seed_to_int
from web_backend.deps import ServicesDep
from web_backend.errors import validation_detail
from web_backend.jobs import too_many
from web_backend.ml_client import MLUnavailable
from web_backend.routes.auth import client_ip

router = APIRouter(tags=["samples"])


@router.get("/v1/sample.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}},
                       503: {"description": "the image service is not reachable right now"}})
async def sample_png(
    request: Request, services: ServicesDep,
    seed: Annotated[str | None, Query(min_length=1, max_length=64, description=(
        "A number or a name: the same name is always the same character."))] = None,
    psi: Annotated[float | None, Query(ge=0, le=2, description="Creativity, 0-2.")] = None,
    model: Annotated[str, Query(min_length=1, max_length=64,
                                pattern=r"^[A-Za-z0-9_.-]+$")] = "default",
) -> Response:
    """One generator pass, no queue: milliseconds on a GPU. Rate-limited per address."""
    settings = services.settings
    rate = services.limiter.hit("sample", client_ip(request), limit=settings.samples_per_minute)
    if not rate.allowed:
        raise too_many(f"at most {settings.samples_per_minute} samples per minute; try again "
                       f"in {rate.reset_after_s} s", rate)
    key = (model, seed_to_int(seed), psi) if seed is not None else None
    cache = services.sample_cache
    if key is not None and key in cache:
        cache.move_to_end(key)
        return _png(cache[key], key[1], "hit")
    try:
        body = GenerationRequest(seed=seed, psi=psi, model=model)
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc)) from None
    try:
        message = await services.ml.sample(body)
    except MLUnavailable as exc:
        raise HTTPException(503, f"the image service is not reachable right now ({exc})",
                            headers={"Retry-After": "10"}) from None
    if not isinstance(message, Result):
        status = 422 if message.code == "invalid_request" else 503
        raise HTTPException(status, message.message)
    if key is not None and settings.sample_cache_size:
        cache[key] = message.png
        while len(cache) > settings.sample_cache_size:
            cache.popitem(last=False)
    return _png(message.png, message.seed, "miss")


def _png(data: bytes, seed: int, cache: str) -> Response:
    return Response(data, media_type="image/png",
                    headers={"X-Seed": str(seed), "X-Cache": cache,
                             "Cache-Control": "public, max-age=86400"})
