"""Web backend settings (``CLIPGAN_*`` environment variables or ``.env``).

Unsafe defaults are refused: outside ``CLIPGAN_ENV=dev`` the service will not start
without a real secret key. In dev, a random key is made once and kept in the data
directory, so sessions survive restarts without anyone committing a secret.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_LENGTH = 32
_KNOWN_DEFAULTS = {"changeme", "secret", "change-me", "dev", "development"}


class InsecureSettingsError(ValueError):
    pass


class DatabaseSettings(BaseSettings):
    """Just where the data lives: enough for ``clipgan db`` and ``clipgan users``, which
    sign nothing and so must work without the secret key (next to a running server)."""

    model_config = SettingsConfigDict(env_prefix="CLIPGAN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="SQLite file, results, dev key.")
    database_url: str | None = Field(None, description=(
        "SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in data_dir."))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'clipgan.db').resolve()}"


class WebSettings(DatabaseSettings):
    env: Literal["dev", "prod"] = Field("prod", description="'dev' allows a generated key.")
    secret_key: SecretStr | None = Field(None, description=(
        f"Signs tokens and image links; >= {MIN_SECRET_LENGTH} characters outside dev."))
    redis_url: str | None = Field(None, description=(
        "Redis for rate limits shared by every worker; default: in-process memory."))
    cors_origins: list[str] = Field(default_factory=list, description=(
        "Origins allowed to call the API from a browser; default same-origin only."))
    access_token_ttl_s: int = Field(900, ge=60, le=86400)
    refresh_token_ttl_s: int = Field(30 * 86400, ge=3600)
    signed_url_ttl_s: int = Field(3600, ge=60, description="Lifetime of shareable image links.")
    # default per-user limits (admins can override per user)
    submissions_per_minute: int = Field(10, ge=1)
    max_active_jobs: int = Field(3, ge=1)
    daily_images: int = Field(200, ge=1)
    login_attempts_per_minute: int = Field(10, ge=1, description="Per client IP.")
    registrations_per_hour: int = Field(20, ge=1, description="Per client IP.")
    samples_per_minute: int = Field(30, ge=1, description="Instant samples per client address.")
    sample_cache_size: int = Field(512, ge=0, description="Instant samples kept in memory.")
    default_job_seconds: float = Field(30.0, gt=0, description=(
        "ETA guess before any job has finished."))
    ml_slots: int = Field(8, ge=1, description="Jobs the ML side runs at once (for ETAs).")
    max_concurrent_requests: int = Field(32, ge=1, le=40, description=(
        "Requests in progress per worker; more wait their turn (SSE streams excepted)."))
    dispatcher_enabled: bool = Field(True, description=(
        "Run queued jobs from this web process (off: run `clipgan dispatcher` separately)."))
    job_max_attempts: int = Field(3, ge=1, le=20, description="Tries for failures that pass.")
    job_timeout_s: float = Field(1800.0, gt=0, description="Time limit of one attempt.")
    job_lease_s: float = Field(30.0, ge=2, description=(
        "A dispatcher that stops renewing loses its job after this long."))
    retry_backoff_s: list[float] = Field(default_factory=lambda: [2.0, 10.0, 30.0])
    ml_transport: Literal["none", "ray", "http"] = Field("none", description=(
        "How to reach the ML side: 'ray' = DeploymentHandle on the Ray cluster, 'http' = "
        "its private ingress (CLIPGAN_ML_URL + CLIPGAN_ML_SECRET)."))
    ml_url: str | None = Field(None, description="Private ingress URL for ml_transport=http.")
    ml_secret: SecretStr | None = Field(None, description="The ingress's shared secret.")
    ray_address: str = Field("auto", description="Ray cluster address for ml_transport=ray.")
    ml_app_name: str = Field("clipgan", description="Serve application name.")

    @model_validator(mode="after")
    def _refuse_unsafe_secret(self) -> WebSettings:
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if self.env != "dev":
            if not key:
                raise InsecureSettingsError(
                    "CLIPGAN_SECRET_KEY is not set; set it to a random string of at least "
                    f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`), or set "
                    "CLIPGAN_ENV=dev for local development")
            if len(key) < MIN_SECRET_LENGTH or key.lower() in _KNOWN_DEFAULTS:
                raise InsecureSettingsError(
                    f"CLIPGAN_SECRET_KEY is too short or a known default; use at least "
                    f"{MIN_SECRET_LENGTH} random characters")
        if self.ml_transport == "http" and (not self.ml_url or not self.ml_secret):
            raise InsecureSettingsError("CLIPGAN_ML_TRANSPORT=http needs CLIPGAN_ML_URL and "
                                        "CLIPGAN_ML_SECRET")
        return self

    def dispatch_policy(self):
        from web_backend.dispatcher import DispatchPolicy

        return DispatchPolicy(lease_s=self.job_lease_s, max_attempts=self.job_max_attempts,
                              job_timeout_s=self.job_timeout_s,
                              backoff_s=tuple(self.retry_backoff_s) or (2.0,))

    def signing_key(self) -> bytes:
        """The secret key; in dev without one, a random key kept in the data dir."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "dev-secret-key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip().encode()
