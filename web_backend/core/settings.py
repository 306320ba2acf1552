"""Web backend settings, in groups, read from ``CLIPGAN_*`` environment variables or ``.env``.

Each group is its own settings class, so a command that needs one group (``clipgan
db`` needs only :class:`DataSettings`) reads only that group and cannot be refused
for a setting it does not use. Every field names its environment variable
explicitly: the attribute is short (``settings.dispatch.lease_s``), the variable is
the one operators already set (``CLIPGAN_JOB_LEASE_S``), and errors name the variable.

Unsafe defaults are refused: outside ``CLIPGAN_ENV=dev`` the service will not start
without a real secret key. In dev, a random key is made once and kept in the data
directory, so sessions survive restarts without anyone committing a secret.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AuthSettings", "DataSettings", "DispatchSettings", "FeedSettings", "HttpSettings",
    "InsecureSettingsError", "LimitSettings", "MLClientSettings", "OpenAISettings",
    "SampleSettings",
    "WebSettings", "WebhookSettings",
]

MIN_SECRET_LENGTH = 32
_KNOWN_DEFAULTS = {"changeme", "secret", "change-me", "dev", "development"}


class InsecureSettingsError(ValueError):
    pass


def var(variable: str, default: Any = ..., **kwargs: Any) -> Any:
    """A field read from ``CLIPGAN_<variable>`` (and settable by its attribute name)."""
    return Field(default, validation_alias=f"CLIPGAN_{variable}", **kwargs)


def var_list(variable: str, factory: Any, **kwargs: Any) -> Any:
    return Field(default_factory=factory, validation_alias=f"CLIPGAN_{variable}", **kwargs)


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPGAN_", env_file=".env", extra="ignore",
                                      populate_by_name=True)


class DataSettings(_Group):
    """Where data lives: enough for ``clipgan db`` and ``clipgan users``, which sign
    nothing and so must work without the secret key (next to a running server)."""

    dir: Path = var("DATA_DIR", Path("data"), description="SQLite file, results, dev key.")
    database_url: str | None = var("DATABASE_URL", None, description=(
        "SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in the data "
        "directory."))
    redis_url: str | None = var("REDIS_URL", None, description=(
        "Redis shared by every web worker (rate limits); default: in-process memory."))
    storage_url: str | None = var("STORAGE_URL", None, description=(
        "Where pictures are kept: file:///path or s3://bucket/prefix (S3 endpoint, region "
        "and credentials from the standard AWS variables). Default: the data directory's "
        "blobs folder. Several web nodes need a store they all reach (s3://)."))
    storage_timeout_s: float = var("STORAGE_TIMEOUT_S", 10.0, gt=0, le=300, description=(
        "Deadline of one call to the picture store; past it, a download answers 503."))
    result_retention_days: int | None = var("RESULT_RETENTION_DAYS", None, ge=1, description=(
        "Finished jobs and their pictures are deleted this many days after they end; "
        "unset: kept until their owner deletes them."))
    retention_interval_s: float = var("RETENTION_INTERVAL_S", 300.0, gt=0, description=(
        "How often the retention sweeper looks for expired jobs."))
    sqlite_synchronous: Literal["normal", "full"] = var("SQLITE_SYNCHRONOUS", "normal",
                                                        description=(
        "SQLite in WAL mode: 'normal' keeps every commit through a crash of the process "
        "(not of the machine); 'full' fsyncs each commit too."))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.dir / 'clipgan.db').resolve()}"

    @field_validator("storage_url")
    @classmethod
    def _known_store(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("file://", "s3://")):
            raise ValueError("CLIPGAN_STORAGE_URL is file:///path or s3://bucket/prefix")
        return url


class AuthSettings(_Group):
    """Tokens, signed links, and the per-address limits on signing in and signing up."""

    access_token_ttl_s: int = var("ACCESS_TOKEN_TTL_S", 900, ge=1, le=86400, description=(
        "Lifetime of an access token; clients refresh it with their refresh token."))
    refresh_token_ttl_s: int = var("REFRESH_TOKEN_TTL_S", 30 * 86400, ge=3600)
    signed_url_ttl_s: int = var("SIGNED_URL_TTL_S", 3600, ge=60, description=(
        "Lifetime of shareable image and event links."))
    login_attempts_per_minute: int = var("LOGIN_ATTEMPTS_PER_MINUTE", 10, ge=1,
                                         description="Per client address.")
    registrations_per_hour: int = var("REGISTRATIONS_PER_HOUR", 20, ge=1,
                                      description="Per client address.")
    failed_sign_ins_per_hour: int = var("FAILED_SIGN_INS_PER_HOUR", 20, ge=1, description=(
        "Per account name, from any address; then sign-in waits."))
    password_changes_per_hour: int = var("PASSWORD_CHANGES_PER_HOUR", 5, ge=1, description=(
        "Attempts per account."))
    login_cache_s: float = var("LOGIN_CACHE_S", 30.0, ge=0, le=300, description=(
        "A status read trusts a login this process checked for up to this long, while its "
        "job feed hears every logout, revocation and disable (each ends it at once); "
        "0: check every read in the database."))


class LimitSettings(_Group):
    """Default per-user job limits; administrators override them per user."""

    submissions_per_minute: int = var("SUBMISSIONS_PER_MINUTE", 10, ge=1)
    max_active_jobs: int = var("MAX_ACTIVE_JOBS", 3, ge=1)
    daily_images: int = var("DAILY_IMAGES", 200, ge=1)


class HttpSettings(_Group):
    """How the HTTP server admits and answers requests."""

    cors_origins: list[str] = var_list("CORS_ORIGINS", list, description=(
        "Origins allowed to call the API from a browser; default same-origin only."))
    max_concurrent_requests: int = var("MAX_CONCURRENT_REQUESTS", 32, ge=1, le=40, description=(
        "Requests in progress per worker; more wait their turn (SSE streams excepted)."))
    forwarded_allow_ips: list[str] = var_list("FORWARDED_ALLOW_IPS", list, description=(
        "Proxies (addresses or CIDR networks) whose X-Forwarded-For/-Proto are believed; "
        "none by default, so clients cannot choose their own address for rate limits."))
    max_body_bytes: int = var("MAX_BODY_BYTES", 64 * 1024, ge=1024, le=1024 * 1024, description=(
        "Largest request body, except job submissions (which may carry an image prompt)."))
    body_timeout_s: float = var("BODY_TIMEOUT_S", 30.0, gt=0, le=600, description=(
        "Time a client has to send a whole request body (408 after)."))
    max_concurrent_uploads: int = var("MAX_CONCURRENT_UPLOADS", 8, ge=1, description=(
        "Job submissions with image prompts being received at once per worker."))
    max_streams_per_user: int = var("MAX_STREAMS_PER_USER", 8, ge=1, description=(
        "Open event streams per account per worker (429 beyond)."))
    max_streams: int = var("MAX_STREAMS", 1000, ge=1, description=(
        "Open event streams per worker (429 beyond)."))
    metrics_allow_ips: list[str] = var_list("METRICS_ALLOW_IPS", list, description=(
        "Addresses or networks that may read /metrics; default: anyone who reaches it."))
    stalled_after_s: float = var("STALLED_AFTER_S", 30.0, gt=0, description=(
        "/healthz fails when requests waited this long and no request finished."))


    @field_validator("metrics_allow_ips")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or network") from None
        return entries


class FeedSettings(_Group):
    """How each web process hears that jobs changed (its event streams follow this)."""

    kind: Literal["auto", "postgres", "redis", "poll"] = var("JOB_FEED", "auto", description=(
        "'postgres' = LISTEN/NOTIFY, 'redis' = pub/sub on CLIPGAN_REDIS_URL, 'poll' = one "
        "query per tick per process; 'auto' picks them in that order from what is configured."))
    poll_s: float = var("JOB_FEED_POLL_S", 0.25, gt=0, le=10, description=(
        "Tick of the 'poll' feed."))
    resync_s: float = var("JOB_FEED_RESYNC_S", 15.0, ge=0, description=(
        "Re-read followed jobs this often anyway with 'postgres'/'redis' (0: only when the "
        "feed reconnects)."))


class WebhookSettings(_Group):
    """Signed calls to the URL a job names when it ends (the outbox sender)."""

    enabled: bool = var("WEBHOOKS_ENABLED", True, description=(
        "Deliver pending webhooks from this web process (several may: each delivery is "
        "claimed by one)."))
    allow_networks: list[str] = var_list("WEBHOOK_ALLOW_NETWORKS", list, description=(
        "Private networks (CIDR) webhooks may reach anyway, e.g. an internal receiver; by "
        "default only public addresses are called."))
    timeout_s: float = var("WEBHOOK_TIMEOUT_S", 10.0, gt=0, le=60, description=(
        "Time a receiver has to answer one delivery."))
    backoff_s: list[float] = var_list(
        "WEBHOOK_BACKOFF_S", lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0], min_length=1,
        description="Waits before each retry; after the last, the delivery is marked failed.")
    poll_s: float = var("WEBHOOK_POLL_S", 1.0, gt=0, le=60, description=(
        "How often to look for deliveries that are due."))

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP network") from None
        return entries

    @property
    def max_attempts(self) -> int:
        return len(self.backoff_s) + 1


class OpenAISettings(_Group):
    """The OpenAI Images API (``/openai/v1``)."""

    wait_s: float = var("OPENAI_WAIT_S", 300.0, gt=0, le=3600, description=(
        "How long a generation request waits for its pictures; then 504 (the jobs go on: "
        "a retry of the same request waits for them again)."))
    max_n: int = var("OPENAI_MAX_N", 4, ge=1, le=16, description=(
        "Most pictures one request may ask for."))


class SampleSettings(_Group):
    """Instant samples (``GET /v1/sample.png``)."""

    per_minute: int = var("SAMPLES_PER_MINUTE", 30, ge=1, description=(
        "Instant samples per client address."))
    cache_size: int = var("SAMPLE_CACHE_SIZE", 512, ge=0, description=(
        "Instant samples kept in memory."))
    onnx: Path | None = var("SAMPLE_ONNX", None, description=(
        "A model's sample graph (`clipgan export-onnx`): this web process renders that "
        "model's samples on its own CPU with ONNX Runtime, not on the ML side."))
    onnx_threads: int = var("SAMPLE_ONNX_THREADS", 1, ge=1, le=64, description=(
        "CPU threads one ONNX sample may use (samples are rendered one at a time)."))


class DispatchSettings(_Group):
    """How queued jobs are run: leases, attempts, time limits."""

    enabled: bool = var("DISPATCHER_ENABLED", True, description=(
        "Run queued jobs from this web process (off: run `clipgan dispatcher` separately)."))
    max_attempts: int = var("JOB_MAX_ATTEMPTS", 3, ge=1, le=20, description=(
        "Tries for failures that may pass."))
    timeout_s: float = var("JOB_TIMEOUT_S", 1800.0, gt=0, description="Time limit of one try.")
    lease_s: float = var("JOB_LEASE_S", 30.0, ge=2, description=(
        "A dispatcher that stops renewing loses its job after this long."))
    backoff_s: list[float] = var_list("RETRY_BACKOFF_S", lambda: [2.0, 10.0, 30.0], min_length=1,
                                      description="Waits before the 1st, 2nd... retry.")
    store_wait_s: float = var("STORE_WAIT_S", 60.0, ge=0, le=3600, description=(
        "How long a finished picture waits in memory for the picture store to come back "
        "before its job is retried (never marked succeeded without it)."))
    progress_interval_s: float = var("PROGRESS_INTERVAL_S", 0.5, gt=0, description=(
        "At most one progress write per job this often (previews always written)."))
    heartbeat_s: float = var("HEARTBEAT_S", 1.0, gt=0, description=(
        "Lease renewal and cancel check while the ML side is silent."))
    poll_s: float = var("DISPATCH_POLL_S", 0.5, gt=0, description=(
        "How often to look for jobs queued by other processes."))
    capacity_refresh_s: float = var("CAPACITY_REFRESH_S", 30.0, gt=0, description=(
        "How often the dispatcher asks the ML side its capacity, only while it runs jobs "
        "there (an idle dispatcher never wakes a deployment scaled to zero)."))

    def backoff_before(self, attempt: int) -> float:
        """Wait before retrying after failed attempt number ``attempt`` (1-based)."""
        return self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)]


class MLClientSettings(_Group):
    """How the web side reaches the ML side."""

    transport: Literal["none", "ray", "http"] = var("ML_TRANSPORT", "none", description=(
        "'ray' = DeploymentHandle on the Ray cluster, 'http' = its private ingress "
        "(CLIPGAN_ML_URL + CLIPGAN_ML_SECRET), 'none' = jobs wait in the queue."))
    url: str | None = var("ML_URL", None, description="Private ingress URL for transport http.")
    secret: SecretStr | None = var("ML_SECRET", None, description="The ingress's shared secret.")
    ray_address: str = var("RAY_ADDRESS", "auto", description="Ray cluster for transport ray.")
    app_name: str = var("ML_APP_NAME", "clipgan", description="Serve application name.")
    slots: int = var("ML_SLOTS", 8, ge=1, description=(
        "Jobs the ML side runs at once, until it says (its info() reports capacity)."))
    default_job_seconds: float = var("DEFAULT_JOB_SECONDS", 30.0, gt=0, description=(
        "ETA guess before any job has finished."))
    cold_start_s: float = var("COLD_START_S", 60.0, gt=0, description=(
        "Expected wait for a GPU replica when the ML side is at zero (docs/operations.md "
        "has the budget), shown until this process has timed a start itself."))

    @model_validator(mode="after")
    def _http_needs_an_address(self) -> MLClientSettings:
        secret = self.secret.get_secret_value().strip() if self.secret else ""
        if self.transport == "http" and (not self.url or len(secret) < MIN_SECRET_LENGTH):
            raise InsecureSettingsError(
                "CLIPGAN_ML_TRANSPORT=http needs CLIPGAN_ML_URL and CLIPGAN_ML_SECRET (the "
                f"ingress's secret, at least {MIN_SECRET_LENGTH} characters)")
        return self


class WebSettings(_Group):
    """Everything the web backend reads, one group per concern."""

    env: Literal["dev", "prod"] = var("ENV", "prod", description=(
        "'dev' allows running without a secret key (a random one is kept in the data dir)."))
    secret_key: SecretStr | None = var("SECRET_KEY", None, description=(
        f"Signs tokens and links; >= {MIN_SECRET_LENGTH} characters outside dev."))
    data: DataSettings = Field(default_factory=DataSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    samples: SampleSettings = Field(default_factory=SampleSettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    ml: MLClientSettings = Field(default_factory=MLClientSettings)

    @model_validator(mode="after")
    def _refuse_unsafe_secret(self) -> WebSettings:
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if self.env != "dev":
            if not key:
                raise InsecureSettingsError(
                    "CLIPGAN_SECRET_KEY is not set; set it to a random string of at least "
                    f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`), or set "
                    "CLIPGAN_ENV=dev for local development")
            if (len(key.strip()) < MIN_SECRET_LENGTH or key.lower() in _KNOWN_DEFAULTS
                    or len(set(key)) < 8):
                raise InsecureSettingsError(
                    f"CLIPGAN_SECRET_KEY is too short or a known default; use at least "
                    f"{MIN_SECRET_LENGTH} random characters")
        return self

    def signing_key(self) -> bytes:
        """The secret key; in dev without one, a random key kept in the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data.dir / "dev-secret-key"
        if not path.exists():
            self.data.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()
