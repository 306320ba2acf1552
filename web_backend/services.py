"""Everything a request handler needs, built once per app by create_app (no globals)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from web_backend.job_feed import JobFeed
from web_backend.kept_views import KeptViews
from web_backend.login_cache import LoginCache
from web_backend.metrics import Metrics
from web_backend.ml_client import MLClient
from web_backend.onnx_samples import OnnxSampler
from web_backend.ratelimit import RateLimiter
from web_backend.security import VerifiedTokens
from web_backend.settings import WebSettings
from web_backend.storage import BlobStore
from web_backend.streams import StreamGate

__all__ = ["Services"]


@dataclass
class Services:
    settings: WebSettings
    engine: Engine
    session_factory: sessionmaker[Session]        # reads
    write_session_factory: sessionmaker[Session]  # changes (IMMEDIATE on SQLite)
    signing_key: bytes
    limiter: RateLimiter
    storage: BlobStore
    ml: MLClient
    metrics: Metrics
    ml_capacity: int                              # jobs the ML side runs at once (ETAs, dispatch)
    streams: StreamGate                           # open /events streams in this process
    logins: LoginCache                            # live logins, while the feed hears changes
    tokens: VerifiedTokens                        # access tokens whose signature was checked
    views: KeptViews                              # job views a status read needs no query for
    feed: JobFeed = field(init=False)             # job changes, fanned out to those streams
    average_job_s: tuple[float, float] | None = None  # the ETA unit and when it was read
    onnx_samples: OnnxSampler | None = None       # samples rendered here (CLIPGAN_SAMPLE_ONNX)
    sample_cache: OrderedDict[tuple[str, int, float | None], bytes] = field(
        default_factory=OrderedDict)  # (model, seed, psi) -> PNG; small LRU per process
