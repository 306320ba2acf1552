"""How the web backend reaches the ML side: one interface, two transports behind it.

* :class:`HandleMLClient`: a Ray Serve DeploymentHandle (same cluster, or the local
  all-in-one run of ``clipgan serve``).
* :class:`HttpMLClient`: the ML side's private HTTP ingress (a web backend on
  another machine), NDJSON streams and a shared secret.

Both speak :mod:`ml_backend.protocol` and nothing else: ``generate`` yields
``Progress*`` then one ``Result`` or one ``Failure``, and ``sample`` returns one of
those two. A transport problem never raises out of them; it becomes a ``Failure``
with code ``busy`` (back pressure: nothing started) or ``unavailable`` (unreachable,
or gone mid-stream), so callers handle one vocabulary: ``Failure.retryable``.
Only ``info`` raises (:class:`MLUnavailable`), for readiness and the model list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
from pydantic import TypeAdapter, ValidationError

from ml_backend.protocol import Failure, GenerationRequest, Progress, Result, StreamMessage
from web_backend.core.settings import MLClientSettings

__all__ = ["HandleMLClient", "HttpMLClient", "MLClient", "MLUnavailable", "NoMLClient",
           "ml_client_from_settings"]

_MESSAGE: TypeAdapter[Progress | Result | Failure] = TypeAdapter(StreamMessage)
Message = Progress | Result | Failure
log = logging.getLogger(__name__)


class MLUnavailable(Exception):
    """The ML side cannot be asked right now (scaled to zero, starting, down)."""


class MLClient(Protocol):
    """How the web side reaches the ML side. Only ``generate``, ``sample`` and ``info``
    reach a Generator replica (and start one when the deployment is at zero);
    ``reachable``, ``known_info`` and ``capacity`` never do, so probes and idle
    processes let it scale to zero."""

    async def info(self) -> dict[str, Any]: ...
    def known_info(self) -> dict[str, Any] | None: ...
    async def capacity(self) -> int | None: ...
    async def replicas(self) -> int | None: ...
    async def reachable(self) -> bool: ...
    async def sample(self, request: GenerationRequest) -> Result | Failure: ...
    def generate(self, request: GenerationRequest) -> AsyncIterator[Message]: ...


def _unavailable(detail: str) -> Failure:
    return Failure(code="unavailable", message=detail)


class NoMLClient:
    """No ML side configured: jobs wait in the queue, readiness says so."""

    _WHY = "no ML side is configured (set CLIPGAN_ML_TRANSPORT)"

    async def info(self) -> dict[str, Any]:
        raise MLUnavailable(self._WHY)

    def known_info(self) -> dict[str, Any] | None:
        return None

    async def capacity(self) -> int | None:
        return None

    async def replicas(self) -> int | None:
        return None

    async def reachable(self) -> bool:
        return False

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        return _unavailable(self._WHY)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Message]:
        yield _unavailable(self._WHY)


class _InfoCache:
    """``info`` answers change rarely; callers ask on every readiness probe."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._value: tuple[float, dict[str, Any]] | None = None

    def get(self) -> dict[str, Any] | None:
        if self._value is not None and time.monotonic() - self._value[0] < self.ttl_s:
            return self._value[1]
        return None

    def put(self, info: dict[str, Any]) -> dict[str, Any]:
        self._value = (time.monotonic(), info)
        return info

    def known(self) -> dict[str, Any] | None:
        """The last answer, however old (the catalog changes only with a deploy)."""
        return self._value[1] if self._value is not None else None


class HandleMLClient:
    """Ray Serve DeploymentHandle transport.

    ``handle`` may be a zero-argument callable that connects on first use, so a web
    process starts (and queues jobs) while the cluster is still coming up.
    """

    def __init__(self, handle: Any, *, info_ttl_s: float = 10.0, timeout_s: float = 10.0) -> None:
        from ray.serve.exceptions import BackPressureError, RequestCancelledError

        self._handle_or_factory = handle
        self._connected = not callable(handle) or hasattr(handle, "options")
        self._lock = asyncio.Lock()
        self._info = _InfoCache(info_ttl_s)
        self._timeout_s = timeout_s
        self._busy_error = BackPressureError
        self._cancelled_error = RequestCancelledError

    def _failure(self, exc: Exception) -> Failure:
        if isinstance(exc, self._busy_error):
            return Failure(code="busy", message=f"the image service is at capacity: {exc}")
        return _unavailable(f"{type(exc).__name__}: {exc}")

    async def _handle(self) -> Any:
        if not self._connected:
            async with self._lock:
                if not self._connected:
                    try:
                        self._handle_or_factory = await asyncio.to_thread(
                            self._handle_or_factory)
                    except Exception as exc:
                        raise MLUnavailable(f"cannot reach the Ray cluster: {exc}") from None
                    self._connected = True
        return self._handle_or_factory

    async def info(self) -> dict[str, Any]:
        cached = self._info.get()
        if cached is not None:
            return cached
        handle = await self._handle()
        try:
            info = await asyncio.wait_for(handle.info.remote(), self._timeout_s)
        except Exception as exc:
            raise MLUnavailable(f"ML side did not answer: {type(exc).__name__}: {exc}") from None
        return self._info.put(info)

    def known_info(self) -> dict[str, Any] | None:
        return self._info.known()

    async def capacity(self) -> int | None:
        """Searches the whole deployment may run at once (``max_ongoing_requests`` x
        ``max_replicas``), as the Serve controller has it: right at zero replicas, and
        while every replica is busy (an ``info`` call would queue behind the jobs)."""
        try:
            handle = await self._handle()
            return await asyncio.wait_for(
                asyncio.to_thread(_controller_capacity, handle), self._timeout_s)
        except Exception as exc:  # a handle that is not Serve's (tests), a controller away
            log.debug("no capacity from the Serve controller: %s", exc)
            reported = (self.known_info() or {}).get("capacity")
            return reported if isinstance(reported, int) else None

    async def replicas(self) -> int | None:
        """Generator replicas running, as the Serve controller sees them (no replica is
        asked); None where it cannot be told."""
        try:
            handle = await self._handle()
            return await asyncio.wait_for(
                asyncio.to_thread(_controller_replicas, handle), self._timeout_s)
        except Exception as exc:
            log.debug("no replica count from the Serve controller: %s", exc)
            return None

    async def reachable(self) -> bool:
        """The cluster answers (a handle from its Serve controller); no replica is asked."""
        try:
            await self._handle()
        except MLUnavailable:
            return False
        return True

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        try:
            handle = await self._handle()
            message: Result | Failure = await handle.sample.remote(request)
            return message
        except MLUnavailable as exc:
            return _unavailable(str(exc))
        except Exception as exc:
            return self._failure(exc)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Message]:
        try:
            handle = await self._handle()
        except MLUnavailable as exc:
            yield _unavailable(str(exc))
            return
        stream = handle.options(stream=True).generate.remote(request)
        try:
            while True:
                try:
                    message = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except self._cancelled_error:
                    raise asyncio.CancelledError from None  # we cancelled it ourselves
                except Exception as exc:  # replica died, back pressure, cluster gone
                    yield self._failure(exc)
                    return
                yield message
        finally:
            stream.cancel()  # our caller stopped listening: stop the search too


async def _ndjson_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """NDJSON lines split on b"\\n" only (a line reader that also breaks on U+2028 or
    NEL would cut a message that carries one in a string)."""
    buffer = bytearray()
    async for chunk in chunks:
        scanned = len(buffer)  # the part before had no newline
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", scanned)) >= 0:
            yield bytes(buffer[start:end])
            start = scanned = end + 1
        del buffer[:start]
    if buffer:
        yield bytes(buffer)


def _from_response(status: int, body: bytes) -> Failure:
    """A non-200 answer of the ingress. Its failures come as messages; the rest are the
    door's own answers (wrong secret, overloaded proxy)."""
    try:
        message = _MESSAGE.validate_json(body)
        if isinstance(message, Failure):
            return message
    except ValidationError:
        pass
    if status == 401:
        return _unavailable("the ML ingress refused our shared secret (check CLIPGAN_ML_SECRET)")
    if status == 503:
        return Failure(code="busy", message="the ML ingress is overloaded")
    return _unavailable(f"the ML ingress answered {status}")


class HttpMLClient:
    """The ML side's private HTTP ingress (a web backend on another machine).

    Every request carries the shared secret. Closing a stream closes the connection,
    which the ingress turns into a cancel of the search.
    """

    def __init__(self, base_url: str, secret: str, *, connect_timeout_s: float = 10.0,
                 info_ttl_s: float = 10.0) -> None:
        timeout = httpx.Timeout(connect_timeout_s, read=None)  # searches stream for minutes
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout,
                                         headers={"Authorization": f"Bearer {secret}"})
        self._info = _InfoCache(info_ttl_s)

    async def info(self) -> dict[str, Any]:
        cached = self._info.get()
        if cached is not None:
            return cached
        try:
            response = await self._client.get("/v1/info", timeout=10)
        except httpx.HTTPError as exc:
            raise MLUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise MLUnavailable(_from_response(response.status_code, response.content).message)
        info: dict[str, Any] = response.json()
        return self._info.put(info)

    def known_info(self) -> dict[str, Any] | None:
        return self._info.known()

    async def reachable(self) -> bool:
        """The private ingress answers ``/v1/ready`` itself: no Generator replica is asked."""
        try:
            response = await self._client.get("/v1/ready", timeout=5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def sample(self, request: GenerationRequest) -> Result | Failure:
        try:
            response = await self._client.post(
                "/v1/sample", content=request.model_dump_json(),
                headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return _unavailable(f"{type(exc).__name__}: {exc}")
        if response.status_code != 200:
            return _from_response(response.status_code, response.content)
        try:
            message = _MESSAGE.validate_json(response.content)
        except ValidationError:
            return _unavailable("the ML ingress sent an unreadable answer")
        if isinstance(message, Progress):
            return _unavailable("the ML ingress sent progress for a sample")
        return message

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Message]:
        try:
            async with self._client.stream(
                    "POST", "/v1/generate", content=request.model_dump_json(),
                    headers={"Content-Type": "application/json"}) as response:
                if response.status_code != 200:
                    yield _from_response(response.status_code, await response.aread())
                    return
                async for line in _ndjson_lines(response.aiter_bytes()):
                    if line:
                        yield _MESSAGE.validate_json(line)
        except httpx.HTTPError as exc:
            yield _unavailable(f"{type(exc).__name__}: {exc}")
        except (ValidationError, json.JSONDecodeError):
            yield _unavailable("the ML ingress sent an unreadable message")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def replicas(self) -> int | None:
        return None  # the ingress does not say; the page shows no "starting a GPU"

    async def capacity(self) -> int | None:
        """What the ingress last reported (its controller is not ours to ask)."""
        reported = (self.known_info() or {}).get("capacity")
        return reported if isinstance(reported, int) else None


def _controller_capacity(handle: Any) -> int | None:
    """``max_ongoing_requests`` x ``max_replicas`` of the handle's deployment, from the
    Serve controller's record of the deployed config (a controller call, no replica).
    None without a connected Ray (Serve's local testing mode): asking would start one."""
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    details = client.get_serve_details()
    deployment = details["applications"][handle.app_name]["deployments"][
        handle.deployment_name]["deployment_config"]
    autoscaling = deployment.get("autoscaling_config") or {}
    replicas = autoscaling.get("max_replicas") or deployment.get("num_replicas") or 1
    return int(deployment["max_ongoing_requests"]) * int(replicas)


def _controller_replicas(handle: Any) -> int | None:
    """RUNNING replicas of the handle's deployment, from the Serve controller's status."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return None
    app = serve.status().applications.get(handle.app_name)
    deployment = app.deployments.get(handle.deployment_name) if app else None
    if deployment is None:
        return None
    states: dict[Any, int] = dict(deployment.replica_states)
    return int(states.get("RUNNING", 0))


def _connect_to_ray(address: str, app_name: str) -> Callable[[], Any]:
    def connect() -> Any:
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=address, namespace="serve", log_to_driver=False)
        return serve.get_deployment_handle("Generator", app_name=app_name)

    return connect


def ml_client_from_settings(settings: MLClientSettings) -> MLClient:
    """The one way the app and the CLI build their ML client."""
    if settings.transport == "ray":
        return HandleMLClient(_connect_to_ray(settings.ray_address, settings.app_name))
    if settings.transport == "http":
        if not settings.url or settings.secret is None:
            raise ValueError("CLIPGAN_ML_URL and CLIPGAN_ML_SECRET are needed for "
                             "CLIPGAN_ML_TRANSPORT=http")
        return HttpMLClient(settings.url, settings.secret.get_secret_value())
    return NoMLClient()
