"""Everything a request handler needs, built once per app by create_app (no globals).

Routes take what they need from here and hand domain code only that: the domain
packages never see this container.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from web_backend.accounts.keys import KeyUsage, VerifiedKeys
from web_backend.core.metrics import Metrics
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.security import VerifiedTokens
from web_backend.core.settings import WebSettings
from web_backend.jobs.eta import Throughput
from web_backend.jobs.ml_client import MLClient
from web_backend.jobs.submit import Submissions
from web_backend.jobs.views import JobViewer
from web_backend.live.feed import JobFeed
from web_backend.live.kept_views import KeptViews
from web_backend.live.login_cache import LoginCache
from web_backend.live.streams import StreamGate
from web_backend.samples.cache import SampleCache
from web_backend.samples.onnx import OnnxSampler
from web_backend.storage.keeper import BlobKeeper
from web_backend.webhooks.targets import Resolver

__all__ = ["Services"]


@dataclass
class Services:
    settings: WebSettings
    engine: Engine
    session_factory: sessionmaker[Session]        # reads
    write_session_factory: sessionmaker[Session]  # changes (IMMEDIATE on SQLite)
    signing_key: bytes
    limiter: RateLimiter
    blobs: BlobKeeper                             # pictures: the store and who refers to what
    ml: MLClient
    metrics: Metrics
    throughput: Throughput                        # jobs the ML side runs at once, job time
    job_viewer: JobViewer                         # how a job looks (links, ETA)
    submissions: Submissions                      # new jobs under the account's limits
    streams: StreamGate                           # open /events streams in this process
    logins: LoginCache                            # live logins, while the feed hears changes
    tokens: VerifiedTokens                        # access tokens whose signature was checked
    key_checks: VerifiedKeys                      # API keys whose hash was checked
    key_usage: KeyUsage                           # keys used since the last minute's write
    views: KeptViews                              # job views a status read needs no query for
    sample_cache: SampleCache                     # (model, seed, psi) -> PNG, small LRU
    resolver: Resolver                            # webhook host names, bounded lookups
    feed: JobFeed = field(init=False)             # job changes, fanned out to those streams
    onnx_samples: OnnxSampler | None = None       # samples rendered here (CLIPGAN_SAMPLE_ONNX)
