"""Ray Serve application: the generator on autoscaled (GPU) replicas, with no public door.

Two topologies:

* **Handle only** (default): no HTTP route at all. The web backend runs on the same
  Ray cluster (on the head node, or the private local Ray of `clipgan serve`) and calls
  :class:`GeneratorDeployment` through a ``DeploymentHandle``; start Serve with the
  HTTP proxy disabled (``proxy_location: Disabled``).
* **Private HTTP ingress** (``ingress_enabled``): for a web backend on another
  machine. :class:`GeneratorIngress` streams NDJSON, binds a private address and
  refuses any request without the shared secret (constant-time compare).

Streams are ``Progress*`` then one ``Result`` or one ``Failure``: the same contract
over both transports. :func:`failure_from` is the ML side's one classification of
what went wrong; the ingress sends that ``Failure`` as it is, so no status code has
to be translated back on the other side.

Developers use it in-process, no cluster needed::

    from ray import serve
    handle = serve.run(build_app(MLSettings()), _local_testing_mode=True)
    async for message in handle.options(stream=True).generate.remote(request): ...
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import torch
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ml_backend.guidance import GuidanceError
from ml_backend.pipeline import Pipeline
from ml_backend.protocol import Failure, GenerationRequest, Progress, Result
from ml_backend.search import SearchCancelled
from ml_backend.settings import MLSettings, UnknownModelError
from ml_backend.text import line_safe_json

__all__ = ["GeneratorDeployment", "GeneratorIngress", "app_builder", "build_app",
           "deployment_options", "failure_from", "start_options"]

log = logging.getLogger(__name__)

_INVALID = (GuidanceError, UnknownModelError, ValidationError, ValueError)
_DONE = object()


MIN_INGRESS_SECRET = 32


def failure_from(exc: BaseException) -> Failure:
    """What went wrong on the ML side, as the caller's retry decision needs it."""
    if isinstance(exc, SearchCancelled):
        return Failure(code="cancelled", message=str(exc) or "cancelled")
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        return Failure(code="invalid_request", message=problems)
    if isinstance(exc, _INVALID):
        return Failure(code="invalid_request", message=str(exc))
    log.error("generation failed", exc_info=exc)
    return Failure(code="internal", message=f"{type(exc).__name__}: {exc}")


class GeneratorDeployment:
    """One replica: loads the models once in ``__init__``, then serves searches and samples.

    Concurrent ``generate`` calls on a replica share GPU passes through the pipeline's
    batch scheduler; blocking work runs on its worker thread, never on the event loop.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = MLSettings(**settings)
        self._pipeline = Pipeline.from_settings(self._settings)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config`` overrides settings (model registry, checkpoints, device) live."""
        updated = MLSettings(**{**self._settings.model_dump(), **(user_config or {})})
        if updated == self._settings:
            return
        old, self._pipeline = self._pipeline, Pipeline.from_settings(updated)
        self._settings = updated
        old.close()

    async def generate(self, request: GenerationRequest | dict[str, Any],
                       ) -> AsyncIterator[Progress | Result | Failure]:
        """Stream progress, then the result; a caller's cancel stops the search."""
        try:
            request = GenerationRequest.model_validate(request)
            if request.is_sample:
                yield await asyncio.to_thread(self._pipeline.sample, request)
                return
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()

            def on_progress(progress: Progress) -> None:  # on the search thread
                loop.call_soon_threadsafe(queue.put_nowait, progress)

            handle = self._pipeline.submit(request, on_progress=on_progress)
        except Exception as exc:
            yield failure_from(exc)
            return
        handle.future.add_done_callback(
            lambda _: loop.call_soon_threadsafe(queue.put_nowait, _DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            error = handle.future.exception()
            yield handle.future.result() if error is None else failure_from(error)
        finally:
            if not handle.done():  # the caller went away (cancel lands at an await)
                handle.cancel()

    async def sample(self, request: GenerationRequest | dict[str, Any]) -> Result | Failure:
        try:
            request = GenerationRequest.model_validate(request)
            return await asyncio.to_thread(self._pipeline.sample, request)
        except Exception as exc:
            return failure_from(exc)

    async def info(self) -> dict[str, Any]:
        """Models, load, and ``capacity``: searches the whole deployment runs at once
        (slots per replica x most replicas), which callers size their concurrency by."""
        s = self._settings
        return {**self._pipeline.info(), "load": self._pipeline.load(),
                "capacity": s.batch_slots * s.max_replicas,
                "replica": {"host": socket.gethostname(), "pid": os.getpid()}}

    async def check_health(self) -> None:
        """Models loaded, search threads alive, device usable; raising marks us unhealthy."""
        self._pipeline.check_alive()
        device = self._settings.resolved_device()
        probe = await asyncio.to_thread(lambda: float(torch.ones(1, device=device).add(1)))
        if probe != 2.0:
            raise RuntimeError(f"device {device} returned wrong arithmetic")


class GeneratorIngress:
    """Private HTTP door for a remote web backend: NDJSON streams, shared-secret auth.

    One ``__call__`` handles every route, so the secret check cannot be forgotten on
    one of them. Routes: ``POST /v1/generate`` (NDJSON stream), ``POST /v1/sample``,
    ``GET /v1/info`` (these three reach a Generator replica) and ``GET /v1/ready``
    (answered here: a readiness probe must not start a GPU).
    """

    def __init__(self, generator: DeploymentHandle, secret: str) -> None:
        # fail closed here too, not only in settings: a caller that builds the class
        # directly with "" would otherwise accept "Authorization: Bearer " as the secret
        if len(secret.strip()) < MIN_INGRESS_SECRET or len(set(secret)) < 8:
            raise ValueError(f"the ingress needs a shared secret of at least "
                             f"{MIN_INGRESS_SECRET} random characters")
        self._generator = generator
        self._secret = secret.encode()

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the secret matched
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._secret)

    async def __call__(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"detail": "missing or wrong shared secret"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        route = (request.method, request.url.path.rstrip("/"))
        if route == ("GET", "/v1/ready"):  # the door itself: wakes no Generator replica
            return JSONResponse({"status": "ok"})
        if route == ("GET", "/v1/info"):
            return JSONResponse(await self._generator.info.remote())
        if route not in {("POST", "/v1/generate"), ("POST", "/v1/sample")}:
            return JSONResponse({"detail": "not found"}, status_code=404)
        try:
            body = GenerationRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            failure = failure_from(exc)
            return JSONResponse(failure.model_dump(mode="json"), status_code=failure.http_status)
        if route[1] == "/v1/sample":
            message = await self._generator.sample.remote(body)
            status = 200 if isinstance(message, Result) else message.http_status
            return JSONResponse(message.model_dump(mode="json"), status_code=status)
        stream = cast(DeploymentResponseGenerator[Any],
                      self._generator.options(stream=True).generate.remote(body))

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for message in stream:
                    yield line_safe_json(message.model_dump_json()).encode() + b"\n"
            finally:
                stream.cancel()  # the client went away: stop the search too

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def deployment_options(settings: MLSettings) -> dict[str, Any]:
    """Resources, autoscaling and queue bounds, all from settings."""
    slots = settings.batch_slots
    return dict(
        name="Generator",
        ray_actor_options={"num_gpus": settings.replica_gpus,
                           "num_cpus": settings.replica_cpus},
        max_ongoing_requests=slots,                 # one per batch slot: the replica's capacity
        max_queued_requests=settings.max_queued_requests,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        health_check_period_s=10,
        health_check_timeout_s=60,
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            # at deploy as many as the floor: with min_replicas 0 a deploy starts no GPU
            # (the first job does)
            "initial_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": slots,       # a full replica (every slot busy) is on target
            "upscale_delay_s": settings.upscale_delay_s,
            "downscale_delay_s": settings.downscale_delay_s,
            "downscale_to_zero_delay_s": settings.downscale_to_zero_delay_s,
        },
    )


def build_app(settings: MLSettings | None = None) -> serve.Application:
    """The Serve application: the generator, plus the private ingress when enabled."""
    settings = settings or MLSettings()
    generator = serve.deployment(**deployment_options(settings))(GeneratorDeployment).bind(
            # the replicas never see the ingress secret; only the ingress holds it
            settings.model_dump(mode="json", exclude={"ingress_enabled", "ingress_secret"}))
    if not settings.ingress_enabled:
        return generator
    secret = settings.ingress_secret.get_secret_value() if settings.ingress_secret else ""
    return serve.deployment(
        name="GeneratorIngress", num_replicas=1, max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0},
    )(GeneratorIngress).bind(generator, secret)


def start_options(settings: MLSettings) -> dict[str, Any]:
    """``serve.start`` arguments: no HTTP proxy at all unless the private ingress is on."""
    if not settings.ingress_enabled:
        return {"proxy_location": "Disabled"}
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": settings.ingress_host, "port": settings.ingress_port,
                             "request_timeout_s": settings.graceful_shutdown_timeout_s}}


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve deploy`` entry point: ``args`` from serve_config.yaml override env settings."""
    return build_app(MLSettings(**args))
