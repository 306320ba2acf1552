"""How the web backend reaches the ML side: one interface, transports behind it.

``HandleMLClient`` uses a Ray Serve DeploymentHandle (same cluster, or the local
all-in-one run). Issue "job execution" adds the HTTP-ingress transport.
Only ``ml_backend.protocol`` crosses this boundary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
from pydantic import TypeAdapter, ValidationError

from ml_backend.protocol import Failure, GenerationRequest, Progress, Result, StreamMessage

_MESSAGE = TypeAdapter(StreamMessage)


class MLUnavailable(Exception):
    """The ML side cannot be reached right now (scaled to zero, starting, down)."""


class MLBusy(MLUnavailable):
    """The ML side is reachable but full (Serve back pressure): try again later."""


def _unavailable(exc: Exception) -> MLUnavailable:
    if type(exc).__name__ == "BackPressureError":
        return MLBusy(str(exc))
    return MLUnavailable(f"{type(exc).__name__}: {exc}")


class MLClient(Protocol):
    async def info(self) -> dict[str, Any]: ...
    async def sample(self, request: GenerationRequest) -> Result | Failure: ...
    def generate(self, request: GenerationRequest,
                 ) -> AsyncIterator[Progress | Result | Failure]: ...


class NoMLClient:
    """No ML side configured: every call says so (readiness reports it)."""

    async def info(self) -> dict[str, Any]:
        raise MLUnavailable("no ML side is configured (set CLIPGAN_ML_TRANSPORT)")

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        raise MLUnavailable("no ML side is configured")

    async def generate(self, request: GenerationRequest,
                       ) -> AsyncIterator[Progress | Result | Failure]:
        raise MLUnavailable("no ML side is configured")
        yield  # pragma: no cover  (makes this an async generator)


class HandleMLClient:
    """Ray Serve DeploymentHandle transport; ``info`` is cached briefly.

    ``handle`` may be a zero-argument callable that connects on first use, so a web
    process starts (and queues jobs) while the cluster is still coming up.
    """

    def __init__(self, handle: Any, *, info_ttl_s: float = 10.0, timeout_s: float = 10.0) -> None:
        self._handle_or_factory = handle
        self._connected = not callable(handle) or hasattr(handle, "options")
        self._lock = asyncio.Lock()
        self._info: tuple[float, dict[str, Any]] | None = None
        self._info_ttl_s = info_ttl_s
        self._timeout_s = timeout_s

    @property
    def _handle(self) -> Any:
        return self._handle_or_factory

    async def _ensure_connected(self) -> None:
        if self._connected:
            return
        async with self._lock:
            if self._connected:
                return
            try:
                self._handle_or_factory = await asyncio.to_thread(self._handle_or_factory)
            except Exception as exc:
                raise MLUnavailable(f"cannot reach the Ray cluster: {exc}") from None
            self._connected = True

    async def info(self) -> dict[str, Any]:
        await self._ensure_connected()
        now = time.monotonic()
        if self._info is not None and now - self._info[0] < self._info_ttl_s:
            return self._info[1]
        try:
            info = await asyncio.wait_for(self._handle.info.remote(), self._timeout_s)
        except Exception as exc:
            raise MLUnavailable(f"ML side did not answer: {type(exc).__name__}: {exc}") from None
        self._info = (now, info)
        return info

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        await self._ensure_connected()
        try:
            return await self._handle.sample.remote(request)
        except Exception as exc:
            raise _unavailable(exc) from None

    async def generate(self, request: GenerationRequest,
                       ) -> AsyncIterator[Progress | Result | Failure]:
        await self._ensure_connected()
        stream = self._handle.options(stream=True).generate.remote(request)
        try:
            while True:
                try:
                    message = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # replica died, back pressure, cluster gone
                    if type(exc).__name__ == "RequestCancelledError":
                        raise asyncio.CancelledError from None  # we cancelled it ourselves
                    raise _unavailable(exc) from None
                yield message
        finally:
            stream.cancel()  # our caller stopped listening: stop the search too


class HttpMLClient:
    """The ML side's private HTTP ingress (a web backend on another machine).

    NDJSON streams; every request carries the shared secret. Closing a stream closes
    the connection, which the ingress turns into a cancel of the search.
    """

    def __init__(self, base_url: str, secret: str, *, connect_timeout_s: float = 10.0) -> None:
        timeout = httpx.Timeout(connect_timeout_s, read=None)  # searches stream for minutes
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout,
                                         headers={"Authorization": f"Bearer {secret}"})

    async def info(self) -> dict[str, Any]:
        try:
            response = await self._client.get("/v1/info", timeout=10)
        except httpx.HTTPError as exc:
            raise MLUnavailable(f"{type(exc).__name__}: {exc}") from None
        self._check(response)
        return response.json()

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        try:
            response = await self._client.post(
                "/v1/sample", content=request.model_dump_json(),
                headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise MLUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (200, 422):
            return _MESSAGE.validate_json(response.content)
        self._check(response)
        raise MLUnavailable(f"ingress answered {response.status_code}")

    async def generate(self, request: GenerationRequest,
                       ) -> AsyncIterator[Progress | Result | Failure]:
        try:
            async with self._client.stream(
                    "POST", "/v1/generate", content=request.model_dump_json(),
                    headers={"Content-Type": "application/json"}) as response:
                if response.status_code == 422:
                    body = (await response.aread()).decode(errors="replace")
                    yield Failure(code="invalid_request", message=body[:500])
                    return
                self._check(response)
                async for line in response.aiter_lines():
                    if line:
                        yield _MESSAGE.validate_json(line)
        except (httpx.HTTPError, ValidationError) as exc:
            raise MLUnavailable(f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code == 401:
            raise MLUnavailable("the ML ingress refused our shared secret (check "
                                "CLIPGAN_ML_SECRET)")
        if response.status_code == 503:
            raise MLBusy("the ML ingress is overloaded")
        if response.status_code != 200:
            raise MLUnavailable(f"the ML ingress answered {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


def ml_client_from_settings(transport: str, *, ray_address: str, app_name: str,
                            url: str | None = None, secret: str | None = None) -> MLClient:
    if transport == "ray":
        def connect() -> Any:
            import ray
            from ray import serve

            if not ray.is_initialized():
                ray.init(address=ray_address, namespace="serve", log_to_driver=False)
            return serve.get_deployment_handle("Generator", app_name=app_name)

        return HandleMLClient(connect)
    if transport == "http":
        if not url or not secret:
            raise ValueError("CLIPGAN_ML_URL and CLIPGAN_ML_SECRET are needed for "
                             "CLIPGAN_ML_TRANSPORT=http")
        return HttpMLClient(url, secret)
    return NoMLClient()
