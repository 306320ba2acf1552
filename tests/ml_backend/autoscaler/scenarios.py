"""The five things an operator expects of the cluster, each run against a FakeCluster
and measured: what the tests assert and what ``bench/cluster.py`` prints.

Each function leaves the cluster as it found it, at zero GPU nodes, except where it
says otherwise, so they run one after the other on one cluster.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.ml_backend.autoscaler.harness import FakeCluster, ServeWatcher, WebNode

# Short versions of serve_config.yaml's delays (and of cluster.yaml's idle timeout, set
# in FakeCluster.start): the behaviour is the file's, only minutes become seconds.
DELAYS = {"upscale_delay_s": 1, "downscale_delay_s": 2, "downscale_to_zero_delay_s": 3}
# Serve averages the load over look_back_period_s (30 s by default) before it scales;
# shortened like the delays, on the deployment only (it is no clipgan setting).
AUTOSCALING = {"look_back_period_s": 2}
CAPACITY_REFRESH_S = 2.0  # the dispatcher's capacity refresh (30 s in production)
PROBE_EVERY_S = 5.0       # a load balancer's readiness probe
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Rig:
    """A cluster with the app deployed and a web backend beside it on the "head"."""

    cluster: FakeCluster
    web: WebNode
    user: httpx.Client
    serve: ServeWatcher
    web_data: Path
    log: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path) -> Rig:
        cluster = FakeCluster.start(idle_timeout_minutes=0.1)
        try:
            cluster.deploy(data_dir=workdir / "ml-data", delays=DELAYS,
                           autoscaling=AUTOSCALING)
            web = cluster.start_web(workdir / "web-data",
                                    capacity_refresh_s=str(CAPACITY_REFRESH_S),
                                    dispatch_poll_s="0.2", max_active_jobs="16",
                                    submissions_per_minute="120")
            serve = cluster.watch_serve()
            rig = cls(cluster=cluster, web=web, user=web.client(), serve=serve,
                      web_data=workdir / "web-data")
            rig.until(lambda: rig.app_status() == "RUNNING", "the app deployed", 120)
            return rig
        except BaseException:
            cluster.stop()
            raise

    def stop(self) -> None:
        self.user.close()
        self.cluster.stop()

    # --- what the cluster is doing ------------------------------------------------------
    def app_status(self) -> str:
        return str(self.serve.status()["app"])

    def replicas(self) -> int:
        """Generator replicas RUNNING, as the Serve controller sees them (asks no replica)."""
        return int(self.serve.status()["running"])

    def gpu_nodes(self) -> dict[str, dict[str, Any]]:
        return self.cluster.gpu_instances()

    def until(self, condition: Callable[[], bool], what: str, timeout: float) -> float:
        """Seconds until ``condition`` holds (polled every 0.2 s); fails after ``timeout``."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout} s "
                                     f"(nodes {self.gpu_nodes()}, replicas {self.replicas()})")
            time.sleep(0.2)
        return time.monotonic() - start

    def at_zero(self, timeout: float = 120) -> float:
        """Until no replica and no GPU node is left; the seconds it took."""
        return self.until(lambda: self.replicas() == 0 and not self.gpu_nodes(),
                          "back to zero replicas and zero GPU nodes", timeout)

    # --- jobs, through the REST API as a user submits them --------------------------------
    def submit(self, steps: int = 3, **extra: Any) -> str:
        r = self.user.post("/v1/jobs", json={"prompt": "silver hair, smile", "steps": steps,
                                             **extra})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.user.get(f"/v1/jobs/{job_id}").json())

    def attempts(self, job_id: str) -> int:
        """Tries the dispatcher started for a job (the API does not show them)."""
        with sqlite3.connect(f"file:{self.web_data / 'clipgan.db'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT attempts FROM jobs WHERE id = ?",
                                  (job_id,)).fetchone()[0])

    def finish(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def done() -> bool:
            found.update(self.job(job_id))
            return found["status"] in TERMINAL

        self.until(done, f"job {job_id} to finish", timeout)
        return found


# --- the scenarios -------------------------------------------------------------------------

def cold_start(rig: Rig) -> dict[str, Any]:
    """No GPU node; one job launches one, the replica starts, the job succeeds. Each
    milestone is timed from the submission."""
    assert not rig.gpu_nodes() and rig.replicas() == 0, "not starting from zero"
    submitted = time.monotonic()
    job_id = rig.submit()
    marks: dict[str, float] = {}

    def watch() -> bool:
        now = round(time.monotonic() - submitted, 2)
        if "node_up_s" not in marks and rig.gpu_nodes():
            marks["node_up_s"] = now
        if "replica_running_s" not in marks and rig.replicas() >= 1:
            marks["replica_running_s"] = now
        job = rig.job(job_id)
        if job["starting_gpu"] and "starting_gpu_shown_s" not in marks:  # what the page says
            assert job["progress"]["step"] == 0 and job["eta_s"] > 0, job
            marks["starting_gpu_shown_s"] = now
        if "first_progress_s" not in marks and job["progress"]["step"] >= 1:
            assert not job["starting_gpu"], job
            marks["first_progress_s"] = now
        if job["status"] in TERMINAL:
            assert job["status"] == "succeeded", job
            marks["job_done_s"] = now
            return True
        return False

    rig.until(watch, "the cold job to finish", 240)
    (node,) = rig.gpu_nodes().values()
    return {**marks, "node_type": node["type"], "market": node["market"]}


def idle(rig: Rig, hold_s: float = 6 * CAPACITY_REFRESH_S + 2) -> dict[str, Any]:
    """After the last job: the replica goes, then its node, and both stay gone while the
    web backend runs (dispatcher refreshing) and a load balancer probes /readyz."""
    started = time.monotonic()
    replica_zero_s = rig.until(lambda: rig.replicas() == 0, "the replica gone", 120)
    node_gone_s = rig.until(lambda: not rig.gpu_nodes(), "the GPU node removed", 120)
    launches_before = _launch_count(rig)
    probes = 0
    held_until = time.monotonic() + hold_s
    while time.monotonic() < held_until:
        ready = httpx.get(f"{rig.web.base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["ml"] == "ok", ready.text
        models = rig.user.get("/v1/models")
        assert models.status_code == 200, models.text
        probes += 1
        for _ in range(int(PROBE_EVERY_S / 0.25)):
            assert rig.replicas() == 0, "something woke the Generator without work"
            assert not rig.gpu_nodes(), "a GPU node started without work"
            time.sleep(0.25)
    assert _launch_count(rig) == launches_before, "a GPU node was launched without work"
    return {"replica_to_zero_s": round(replica_zero_s, 2),
            "node_removed_s": round(replica_zero_s + node_gone_s, 2),
            "held_at_zero_s": round(time.monotonic() - started - replica_zero_s - node_gone_s, 1),
            "readyz_probes": probes}


def spot_shortage(rig: Rig) -> dict[str, Any]:
    """Spot refused: the launch falls back to on-demand and the job succeeds; once spot
    is back, the next node is spot again."""
    rig.at_zero()
    refused_before = len(rig.cluster.ledger().get("refused", []))
    rig.cluster.spot_short(True)
    try:
        submitted = time.time()
        job_id = rig.submit()
        fallback_s = rig.until(lambda: bool(rig.gpu_nodes()), "a GPU node despite no spot", 60)
        (node,) = rig.gpu_nodes().values()
        assert node["market"] == "on-demand", node
        job = rig.finish(job_id)
        assert job["status"] == "succeeded", job
        refused = rig.cluster.ledger()["refused"][refused_before:]
        assert refused, "the fake cloud never refused spot: the shortage was not exercised"
        shortage = {"fallback_node_s": round(fallback_s, 2), "fallback_type": node["type"],
                    "spot_refusals": len(refused), "job_done_s": round(time.time() - submitted, 2)}
    finally:
        rig.cluster.spot_short(False)
    rig.at_zero()
    job_id = rig.submit()
    rig.until(lambda: bool(rig.gpu_nodes()), "a GPU node once spot is back", 60)
    (node,) = rig.gpu_nodes().values()
    assert node["market"] == "spot", node
    assert rig.finish(job_id)["status"] == "succeeded"
    return {**shortage, "after_shortage_market": node["market"]}


def node_loss(rig: Rig, steps: int = 60) -> dict[str, Any]:
    """A GPU node killed mid-job (raylet and workers, SIGKILL): the job runs again on a
    new node and succeeds once; a job queued behind it is not lost either."""
    job_id = rig.submit(steps=steps)
    rig.until(lambda: rig.job(job_id)["progress"]["step"] >= 1, "the job running", 180)
    behind = rig.submit()
    (victim, _), = rig.gpu_nodes().items()
    killed = time.monotonic()
    rig.cluster.kill_instance(victim)
    replaced_s = rig.until(lambda: any(n != victim for n in rig.gpu_nodes()),
                           "a new GPU node after the loss", 120)
    job = rig.finish(job_id, timeout=300)
    done_s = time.monotonic() - killed
    assert job["status"] == "succeeded", job
    assert job["progress"]["step"] == job["progress"]["total"] == steps
    assert rig.attempts(job_id) == 2, "the lost try and one more, no third"
    picture = rig.user.get(f"/v1/jobs/{job_id}/image")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert rig.finish(behind)["status"] == "succeeded"
    assert victim in rig.cluster.ledger()["gone"]
    return {"replacement_node_s": round(replaced_s, 2), "job_done_after_loss_s": round(done_s, 2),
            "attempts": rig.attempts(job_id)}


def burst(rig: Rig, jobs: int = 16, steps: int = 20, settle_s: float = 60) -> dict[str, Any]:
    """``jobs`` jobs at once at zero replicas: all succeed; how fast replicas follow.

    Serve sizes the deployment as the requests / ``target_ongoing_requests`` (8), so 16
    jobs justify 2 replicas. A replica that is still starting when the last job ends is
    waited for (up to ``settle_s``): on a 2-core machine the first replica's searches
    slow the second one's start, and when it runs is the figure asked for."""
    rig.at_zero()
    submitted = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        ids = list(pool.map(lambda _: rig.submit(steps=steps), range(jobs)))
    timeline: dict[int, float] = {}
    most = 0
    done_s: float | None = None

    def record() -> bool:
        nonlocal most, done_s
        running = rig.replicas()
        if running > most:
            most = running
            timeline[running] = round(time.monotonic() - submitted, 2)
        if done_s is None and all(rig.job(i)["status"] in TERMINAL for i in ids):
            done_s = round(time.monotonic() - submitted, 2)
        return done_s is not None and (most >= 2 or time.monotonic() - submitted
                                       > done_s + settle_s)

    rig.until(record, f"{jobs} jobs done", 600 + settle_s)
    statuses = [rig.job(i)["status"] for i in ids]
    assert statuses == ["succeeded"] * jobs, statuses
    return {"jobs": jobs, "steps": steps, "replicas_at_s": timeline, "most_replicas": most,
            "all_done_s": done_s, "nodes_launched": _launch_count(rig)}


def _launch_count(rig: Rig) -> int:
    """Instances the cloud has launched so far."""
    return int(rig.cluster.ledger()["launched"])
