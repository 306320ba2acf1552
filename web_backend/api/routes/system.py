"""Liveness, readiness and the model list."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from web_backend.api.deps import ClientAddress, ServicesDep
from web_backend.api.openapi import refusals
from web_backend.api.schemas import Health, ModelList, Readiness
from web_backend.core.errors import Forbidden, ServiceUnavailable
from web_backend.jobs.ml_client import MLUnavailable

__all__ = ["router"]


def _address_in(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)

log = logging.getLogger(__name__)

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, responses={503: {
    "model": Health, "description": "Requests are stuck: restart this process."}})
async def healthz(request: Request, services: ServicesDep) -> JSONResponse:
    """Liveness: the process answers and its requests are moving (no dependencies checked)."""
    stalled_s = request.app.state.admission.stalled_for()
    if stalled_s > services.settings.http.stalled_after_s:
        return JSONResponse({"status": "stalled", "detail": (
            f"every request slot has been busy for {stalled_s:.0f} s with requests waiting")},
            status_code=503)
    return JSONResponse({"status": "ok"})


def _database_ok(services: ServicesDep) -> str:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        log.warning("readiness: database unreachable: %s: %s", type(exc).__name__, exc)
        return "unreachable"


@router.get("/readyz", response_model=Readiness, responses={503: {
    "model": Readiness, "description": "A dependency is down: `checks` says which."}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: database and ML side reachable (and Redis, when configured). The ML
    side is asked through its cluster or door only, never a Generator replica: a probe
    every few seconds must not keep a GPU deployment from scaling to zero."""
    checks: dict[str, str] = {"database": await run_in_threadpool(_database_ok, services)}
    try:
        reachable = await asyncio.wait_for(services.ml.reachable(), 10)
    except TimeoutError:
        reachable = False
    if not reachable:
        log.warning("readiness: ML side unreachable")
    checks["ml"] = "ok" if reachable else "unreachable"
    if services.limiter.shared:
        try:
            checks["redis"] = "ok" if await run_in_threadpool(services.limiter.ping) else "down"
        except Exception as exc:
            log.warning("readiness: Redis unreachable: %s: %s", type(exc).__name__, exc)
            checks["redis"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/v1/models", response_model=ModelList, responses=refusals(503, described={
    503: "The image service is not reachable right now; jobs still queue."}))
async def models(services: ServicesDep) -> dict[str, Any]:
    """The generators the ML side serves, with their defaults."""
    try:
        info = services.ml.known_info() or await services.ml.info()
    except MLUnavailable as exc:
        log.warning("models: ML side unreachable: %s", exc)
        raise ServiceUnavailable("the image service is not reachable right now; jobs are "
                                 "still accepted and wait in the queue",
                                 retry_after_s=30) from None
    return {"models": info.get("models", {}), "upscaler": info.get("upscaler")}


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(services: ServicesDep, address: ClientAddress) -> Response:
    """Prometheus text format: queue depth, jobs by status, durations, limit refusals."""
    allowed = services.settings.http.metrics_allow_ips
    if allowed and not _address_in(address, allowed):
        raise Forbidden("metrics are readable only from CLIPGAN_METRICS_ALLOW_IPS")
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
