"""The FastAPI application factory: everything is built here, nothing at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from web_backend import migrate
from web_backend.bodies import BodyLimit
from web_backend.db import keep_private, make_engine, make_session_factory
from web_backend.dispatcher import Dispatcher
from web_backend.errors import install_error_handlers
from web_backend.feed_sources import (
    ChangeSource,
    FeedKind,
    PollChanges,
    PostgresChanges,
    RedisChanges,
    announce_job_commits,
    publish_each,
    redis_publisher,
    resolve_feed_kind,
)
from web_backend.job_feed import JobFeed, JobView, Visible, visible_state
from web_backend.jobs import job_columns, job_views
from web_backend.kept_views import KeptViews
from web_backend.login_cache import LoginCache, announce_login_changes
from web_backend.logs import RequestIdMiddleware
from web_backend.metrics import Metrics
from web_backend.middleware import Admission, ConcurrencyLimit
from web_backend.ml_client import MLClient, NoMLClient, ml_client_from_settings
from web_backend.onnx_samples import OnnxSampler
from web_backend.openapi import install_openapi, operation_id
from web_backend.ratelimit import RateLimiter
from web_backend.routes import admin, auth, jobs, samples, system, users
from web_backend.security import TokenError, VerifiedTokens
from web_backend.security_headers import SecurityHeaders
from web_backend.services import Services
from web_backend.settings import WebSettings
from web_backend.storage import LocalBlobStore
from web_backend.streams import StreamGate
from web_backend.submission import MAX_SUBMISSION_BYTES
from web_backend.webhook_sender import WebhookSender

__all__ = ["build_services", "create_app", "create_app_from_env"]

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def build_services(settings: WebSettings, ml_client: MLClient | None = None) -> Services:
    """``ml_client``: how to reach the ML side; default: what the settings configure."""
    url = settings.data.resolved_database_url
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    write_session_factory = make_session_factory(engine, writes=True)
    redis_url = settings.data.redis_url
    feed_kind = resolve_feed_kind(settings.feed.kind, url, redis_url)
    logins = LoginCache(max_age_s=settings.auth.login_cache_s)
    signing_key = settings.signing_key()
    views = KeptViews()
    publish = redis_publisher(redis_url) if feed_kind == "redis" and redis_url else None
    # this process's reads see its own writes at once; Redis tells the others
    on_job_commit: list[Callable[[frozenset[str]], None]] = [views.forget]
    if publish is not None:
        on_job_commit.append(publish_each(publish))
    for factory in (session_factory, write_session_factory):
        announce_job_commits(factory, *on_job_commit)
        announce_login_changes(factory, logins, publish)
    services = Services(
        settings=settings, engine=engine, session_factory=session_factory,
        metrics=Metrics(session_factory), write_session_factory=write_session_factory,
        signing_key=signing_key, limiter=RateLimiter(settings.data.redis_url),
        storage=LocalBlobStore(settings.data.dir / "blobs"),
        ml=ml_client if ml_client is not None else ml_client_from_settings(settings.ml),
        ml_capacity=settings.ml.slots,
        streams=StreamGate(per_user=settings.http.max_streams_per_user,
                           total=settings.http.max_streams),
        logins=logins, tokens=VerifiedTokens(signing_key), views=views,
    )
    services.feed = _job_feed(services, feed_kind)
    if settings.samples.onnx is not None:
        services.onnx_samples = OnnxSampler(settings.samples.onnx,
                                            threads=settings.samples.onnx_threads)
        log.info("samples of model %r are rendered here from %s", services.onnx_samples.model,
                 settings.samples.onnx)
    return services


def _job_feed(services: Services, kind: FeedKind) -> JobFeed:
    settings = services.settings

    def load(job_ids: frozenset[str]) -> dict[str, JobView | None]:
        with services.session_factory() as session:
            return {job_id: JobView(*view) if view is not None else None
                    for job_id, view in job_views(session, services, job_ids).items()}

    feed: JobFeed
    source: ChangeSource
    if kind == "postgres":
        source = PostgresChanges(settings.data.resolved_database_url)
    elif kind == "redis" and settings.data.redis_url:
        source = RedisChanges(settings.data.redis_url)
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


def _report_dispatcher_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the dispatcher stopped: jobs will wait until this process restarts",
                     exc_info=task.exception())


def _report_feed_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the job feed stopped: event streams will not see changes until this "
                     "process restarts", exc_info=task.exception())


def _report_sender_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the webhook sender stopped: webhooks wait until this process restarts",
                     exc_info=task.exception())


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
        """Run the dispatcher beside the API when there is an ML side to send jobs to, and
        the webhook sender unless turned off."""
        task = sender_task = None
        stack = contextlib.ExitStack()
        loop = asyncio.get_running_loop()

        def wake_streams() -> None:  # from the signal handler: only schedule
            loop.call_soon_threadsafe(services.feed.close)

        stack.enter_context(services.streams.closing_on_signals(on_close=wake_streams))
        feed = asyncio.create_task(services.feed.run(), name="job-feed")
        feed.add_done_callback(_report_feed_exit)
        if settings.dispatch.enabled and not isinstance(services.ml, NoMLClient):
            app.state.dispatcher = Dispatcher(services, services.ml)
            task = asyncio.create_task(app.state.dispatcher.run(), name="dispatcher")
            task.add_done_callback(_report_dispatcher_exit)
        if settings.webhooks.enabled:
            app.state.webhook_sender = WebhookSender(services)
            sender_task = asyncio.create_task(app.state.webhook_sender.run(),
                                              name="webhook-sender")
            sender_task.add_done_callback(_report_sender_exit)
        try:
            yield
        finally:
            stack.close()
            if task is not None:
                app.state.dispatcher.stop()
                await task
            if sender_task is not None:
                app.state.webhook_sender.stop()
                await asyncio.gather(sender_task, return_exceptions=True)  # logged
            services.feed.close()
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)  # a failure was logged
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
    for module in (system, auth, users, jobs, samples, admin):
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

    # below the 40 threadpool threads and the 50 pooled connections (see middleware.py)
    app.state.admission = Admission(settings.http.max_concurrent_requests)
    app.add_middleware(ConcurrencyLimit, limit=settings.http.max_concurrent_requests,
                       exempt_suffixes=("/events", "/healthz"), admission=app.state.admission)
    # bodies are read before a slot is taken (see bodies.py)
    app.add_middleware(BodyLimit, limit=settings.http.max_body_bytes,
                       timeout_s=settings.http.body_timeout_s,
                       uploads={("POST", "/v1/jobs"): MAX_SUBMISSION_BYTES},
                       may_upload=_bearer_checker(services.tokens),
                       max_concurrent_uploads=settings.http.max_concurrent_uploads)
    app.add_middleware(SecurityHeaders)  # on refusals from the layers inside too
    app.add_middleware(RequestIdMiddleware)  # ids even on refused requests
    if settings.http.forwarded_allow_ips:  # outermost: every layer sees the client's address
        app.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=settings.http.forwarded_allow_ips)
    return app


def _bearer_checker(tokens: VerifiedTokens) -> Callable[[Headers], bool]:
    """Whether headers carry an unexpired access token we signed (revocation is the
    route's to check): enough to let a client send megabytes."""
    def may_upload(headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            tokens.decode(token.strip())
        except TokenError:
            return False
        return True
    return may_upload


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory web_backend.app:create_app_from_env`` (several workers)."""
    return create_app()
