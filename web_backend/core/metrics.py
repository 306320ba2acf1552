"""Prometheus metrics. Job counts come from the database at scrape time, so every web
worker reports the same queue; counters and the duration histogram are per process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from web_backend.core.models import Job, JobStatus

__all__ = ["Metrics"]


class JobsCollector(Collector):
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status = GaugeMetricFamily("clipgan_jobs", "Jobs by status.", labels=["status"])
        with self.session_factory() as session:
            counts = dict(session.execute(
                select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("clipgan_queue_depth", "Jobs waiting to start.",
                                value=counts.get(JobStatus.queued, 0))


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(JobsCollector(session_factory))
        self.rate_limited = Counter("clipgan_rate_limited", "Requests refused by a limit.",
                                    ["limit"], registry=self.registry)
        self.job_seconds = Histogram(
            "clipgan_job_duration_seconds", "ML time of jobs finished by this process.",
            ["status"], registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.search_steps = Counter("clipgan_search_steps", "Search steps of jobs this "
                                    "process finished.", registry=self.registry)
