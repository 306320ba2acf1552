"""The FastAPI application factory: everything is built here, nothing at import time."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from web_backend.accounts.keys import KeyUsage, VerifiedKeys
from web_backend.api.deps import claims_of
from web_backend.api.errors import install_error_handlers
from web_backend.api.openapi import install_openapi, operation_id
from web_backend.api.routes import (
    admin,
    auth,
    jobs,
    keys,
    openai_compat,
    samples,
    system,
    users,
)
from web_backend.api.submission import MAX_SUBMISSION_BYTES
from web_backend.asgi.admission import Admission, ConcurrencyLimit
from web_backend.asgi.bodies import BodyLimit
from web_backend.asgi.logs import RequestIdMiddleware
from web_backend.asgi.security_headers import SecurityHeaders
from web_backend.core import migrate
from web_backend.core.background import Background, running
from web_backend.core.changes import JobsHeard, LoginsHeard, announce_commits
from web_backend.core.db import keep_private, make_engine, make_session_factory
from web_backend.core.errors import ServiceError
from web_backend.core.metrics import Metrics
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.security import VerifiedTokens
from web_backend.core.settings import WebSettings
from web_backend.jobs.dispatcher import Dispatcher
from web_backend.jobs.eta import Throughput
from web_backend.jobs.ml_client import MLClient, NoMLClient, ml_client_from_settings
from web_backend.jobs.retention import RetentionSweeper
from web_backend.jobs.submit import Submissions
from web_backend.jobs.views import JobViewer, job_columns
from web_backend.live.feed import JobFeed, JobView, Visible, visible_state
from web_backend.live.kept_views import KeptViews
from web_backend.live.login_cache import LoginCache
from web_backend.live.sources import (
    ChangeSource,
    FeedKind,
    LoginChanges,
    PollChanges,
    PostgresChanges,
    RedisChanges,
    RedisPublisher,
    publish_each,
    publish_users,
    resolve_feed_kind,
)
from web_backend.live.streams import StreamGate
from web_backend.samples.cache import SampleCache
from web_backend.samples.onnx import OnnxSampler
from web_backend.services import Services
from web_backend.storage.keeper import BlobKeeper
from web_backend.storage.stores import open_store
from web_backend.webhooks.sender import WebhookSender
from web_backend.webhooks.targets import Resolver

__all__ = ["build_services", "create_app", "create_app_from_env", "make_dispatcher",
           "make_webhook_sender"]

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def build_services(settings: WebSettings, ml_client: MLClient | None = None) -> Services:
    """``ml_client``: how to reach the ML side; default: what the settings configure."""
    url = settings.data.resolved_database_url
    engine = make_engine(url, sqlite_synchronous=settings.data.sqlite_synchronous)
    session_factory = make_session_factory(engine)
    write_session_factory = make_session_factory(engine, writes=True)
    redis_url = settings.data.redis_url
    feed_kind = resolve_feed_kind(settings.feed.kind, url, redis_url)
    logins = LoginCache(max_age_s=settings.auth.login_cache_s)
    signing_key = settings.signing_key()
    views = KeptViews()
    publisher = RedisPublisher(redis_url) if feed_kind == "redis" and redis_url else None
    # this process's reads see its own writes at once; Redis tells the others
    on_jobs: list[JobsHeard] = [views.forget]
    on_logins: list[LoginsHeard] = [logins.forget_users]
    if publisher is not None:
        on_jobs.append(publish_each(publisher.publish))
        on_logins.append(publish_users(publisher.publish))
    for factory in (session_factory, write_session_factory):
        announce_commits(factory, jobs=on_jobs, logins=on_logins)
    blobs = BlobKeeper(store=open_store(settings.data.storage_url,
                                        default_root=settings.data.dir / "blobs",
                                        timeout_s=settings.data.storage_timeout_s),
                       sessions=write_session_factory)
    limiter = RateLimiter(settings.data.redis_url)
    throughput = Throughput(capacity=settings.ml.slots,
                            default_job_s=settings.ml.default_job_seconds,
                            cold_start_s=settings.ml.cold_start_s)
    services = Services(
        settings=settings, engine=engine, session_factory=session_factory,
        metrics=Metrics(session_factory), write_session_factory=write_session_factory,
        signing_key=signing_key, limiter=limiter, blobs=blobs,
        ml=ml_client if ml_client is not None else ml_client_from_settings(settings.ml),
        throughput=throughput,
        job_viewer=JobViewer(signing_key=signing_key, link_ttl_s=settings.auth.signed_url_ttl_s,
                             throughput=throughput),
        submissions=Submissions(sessions=write_session_factory, limiter=limiter,
                                defaults=settings.limits, blobs=blobs,
                                throughput=throughput),
        streams=StreamGate(per_user=settings.http.max_streams_per_user,
                           total=settings.http.max_streams),
        logins=logins, tokens=VerifiedTokens(signing_key), views=views,
        key_checks=VerifiedKeys(), key_usage=KeyUsage(write_session_factory),
        sample_cache=SampleCache(settings.samples.cache_size),
        resolver=Resolver(),
    )
    services.feed = _job_feed(services, feed_kind, publisher)
    if settings.samples.onnx is not None:
        services.onnx_samples = OnnxSampler(settings.samples.onnx,
                                            threads=settings.samples.onnx_threads)
        log.info("samples of model %r are rendered here from %s", services.onnx_samples.model,
                 settings.samples.onnx)
    return services


def _job_feed(services: Services, kind: FeedKind, publisher: RedisPublisher | None) -> JobFeed:
    settings = services.settings

    def load(job_ids: frozenset[str]) -> dict[str, JobView | None]:
        with services.session_factory() as session:
            return {job_id: JobView(*view) if view is not None else None
                    for job_id, view in services.job_viewer.views(session, job_ids).items()}

    feed: JobFeed
    source: ChangeSource
    if kind == "postgres":
        source = PostgresChanges(settings.data.resolved_database_url)
    elif kind == "redis" and settings.data.redis_url:
        source = RedisChanges(settings.data.redis_url, publisher=publisher,
                              logins=LoginChanges(services.session_factory),
                              wanted=lambda: feed.watching or _cached())
    else:
        source = PollChanges(services.session_factory, lambda: feed.watching or _cached(),
                             interval_s=settings.feed.poll_s)

    def load_visible(job_ids: frozenset[str]) -> dict[str, Visible]:
        with services.session_factory() as session:
            return {job_id: visible_state(status=status, step=step, total=total, score=score,
                                          preview_key=preview, has_image=bool(image),
                                          error=error)
                    for job_id, status, step, total, score, preview, image, error
                    in job_columns(session, job_ids)}

    def _cached() -> bool:  # the poller also runs while logins or active views are kept
        services.logins.expire()
        return len(services.logins) > 0 or services.views.active > 0

    feed = JobFeed(load=load, load_visible=load_visible, source=source,
                   resync_s=0.0 if kind == "poll" else settings.feed.resync_s,
                   logins=services.logins, kept=services.views)
    return feed


def make_dispatcher(services: Services, ml: MLClient | None = None, *,
                    capacity: int | None = None) -> Dispatcher:
    """A dispatcher for ``services``' database and storage (``ml``: default theirs)."""
    return Dispatcher(sessions=services.write_session_factory, blobs=services.blobs,
                      ml=services.ml if ml is None else ml, settings=services.settings.dispatch,
                      throughput=services.throughput, metrics=services.metrics,
                      capacity=capacity)


def make_webhook_sender(services: Services, *,
                        transport: httpx.AsyncBaseTransport | None = None) -> WebhookSender:
    """A webhook sender for ``services``' database, signing each job's current view."""
    return WebhookSender(sessions=services.session_factory,
                         write_sessions=services.write_session_factory,
                         settings=services.settings.webhooks,
                         allow_http=services.settings.env == "dev",
                         payload=services.job_viewer.payload, resolver=services.resolver,
                         transport=transport)


def _background(app: FastAPI, services: Services) -> list[Background]:
    """What runs beside the API, in start order: the feed first (streams and caches
    need it), the dispatcher when there is an ML side, the webhook sender unless off,
    the retention sweeper (one process at a time works, by a lease)."""
    settings = services.settings
    workers = [Background("job feed", services.feed, "event streams and caches will not "
                          "see changes until this process restarts"),
               Background("API key usage", services.key_usage, "API keys' last use is not "
                          "recorded until this process restarts")]
    if settings.dispatch.enabled and not isinstance(services.ml, NoMLClient):
        app.state.dispatcher = make_dispatcher(services)
        workers.append(Background("dispatcher", app.state.dispatcher,
                                  "jobs will wait until this process restarts"))
    if settings.webhooks.enabled:
        app.state.webhook_sender = make_webhook_sender(services)
        workers.append(Background("webhook sender", app.state.webhook_sender,
                                  "webhooks wait until this process restarts"))
    app.state.retention = RetentionSweeper(sessions=services.write_session_factory,
                                           blobs=services.blobs,
                                           days=settings.data.result_retention_days,
                                           every_s=settings.data.retention_interval_s)
    workers.append(Background("retention sweeper", app.state.retention, "expired pictures "
                              "stay until a process whose sweeper runs takes the lease"))
    return workers


def create_app(settings: WebSettings | None = None, *, ml_client: MLClient | None = None,
               migrate_sqlite: bool = True) -> FastAPI:
    """The whole web backend for ``settings`` (default: from the environment).

    SQLite databases are migrated at start so ``make run`` needs no extra step;
    PostgreSQL is migrated explicitly (``clipgan db upgrade``), once per deploy, never
    by several workers racing each other.
    """
    settings = settings or WebSettings()
    url = settings.data.resolved_database_url
    if url.startswith("sqlite"):
        keep_private(url)  # accounts and password hashes: owner-only, like the key file
    if migrate_sqlite and url.startswith("sqlite"):
        migrate.upgrade(url)
    services = build_services(settings, ml_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The background workers run while the app serves; a signal also wakes streams."""
        loop = asyncio.get_running_loop()

        def wake_streams() -> None:  # from the signal handler: only schedule
            loop.call_soon_threadsafe(services.feed.close)

        # what start-up built (routes, models, schemas: most of the heap) lives as long as
        # the process: out of the collector's sight, a full collection does not walk it
        # (measured: it took p99 of submissions from ~110 ms to ~... ms, bench/web.py)
        gc.collect()
        gc.freeze()
        with services.streams.closing_on_signals(on_close=wake_streams):
            async with running(_background(app, services)):
                yield
        services.resolver.close()
        services.engine.dispose()

    app = FastAPI(title="clipgan", version="0.1.0", lifespan=lifespan,
                  description="Text to anime images: accounts, jobs and results.",
                  generate_unique_id_function=operation_id)
    app.state.services = services
    app.state.dispatcher = None
    app.state.webhook_sender = None
    install_error_handlers(app)
    if settings.http.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.http.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    for module in (system, auth, users, keys, jobs, samples, admin, openai_compat):
        app.include_router(module.router)
    install_openapi(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The web page: static files, no build step, nothing loaded from elsewhere."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """Browsers and bookmark tools ask here whatever the page's <link rel=icon> says."""
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    # below the 40 threadpool threads and the 50 pooled connections (see asgi/admission.py)
    app.state.admission = Admission(settings.http.max_concurrent_requests)
    app.add_middleware(ConcurrencyLimit, limit=settings.http.max_concurrent_requests,
                       # streams, and OpenAI generations that wait for their pictures, hold
                       # no slot: they are bounded per account and process (StreamGate)
                       exempt_suffixes=("/events", "/healthz", "/images/generations"),
                       admission=app.state.admission)
    # bodies are read before a slot is taken (see asgi/bodies.py)
    app.add_middleware(BodyLimit, limit=settings.http.max_body_bytes,
                       timeout_s=settings.http.body_timeout_s,
                       uploads={("POST", "/v1/jobs"): MAX_SUBMISSION_BYTES},
                       may_upload=_bearer_checker(services),
                       max_concurrent_uploads=settings.http.max_concurrent_uploads)
    app.add_middleware(SecurityHeaders)  # on refusals from the layers inside too
    app.add_middleware(RequestIdMiddleware)  # ids even on refused requests
    if settings.http.forwarded_allow_ips:  # outermost: every layer sees the client's address
        app.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=settings.http.forwarded_allow_ips)
    return app


def _bearer_checker(services: Services) -> Callable[[Headers], Awaitable[bool]]:
    """Whether headers carry an unexpired access token we signed, or an API key whose
    hash matches (revocation is the route's to check): enough to let a client send
    megabytes."""
    async def may_upload(headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            await claims_of(token.strip(), services)
        except ServiceError:
            return False
        return True
    return may_upload


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory web_backend.app:create_app_from_env`` (several workers)."""
    return create_app()
