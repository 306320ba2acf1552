"""Ray's real autoscaler on one machine, with the node types of `cluster.yaml`.

``FakeCluster.start`` generates the autoscaling config *from* `cluster.yaml` (same node
type names, ``min_workers``/``max_workers``, resources and node configs; only the
provider, the idle timeout and the commands differ), starts a Ray head bound to
127.0.0.1 with that config, as ``ray up`` starts it (autoscaler v2, the head's node
type and instance id in its environment), and the autoscaler launches GPU-typed worker
nodes through ``fake_cloud`` when Serve asks for a GPU. The Serve app is deployed from
`serve_config.yaml` the way ``serve deploy`` does (demo weights, CPU device, the GPU
resource requested as in production), and the web backend reaches it as on the head.

Everything started here runs in its own process session and temp directory, and is
stopped by process id: never ``ray stop`` (it kills every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.ml_backend.autoscaler.fake_cloud import LEDGER_FILE, SPOT_SHORT_FILE
from tests.servers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_YAML = ROOT / "cluster.yaml"
SERVE_CONFIG = ROOT / "serve_config.yaml"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
PROVIDER = "tests.ml_backend.autoscaler.fake_cloud.SpotFallbackFakeCloudProvider"


def autoscaling_config(cluster: dict[str, Any], *, state_dir: Path, gcs_address: str,
                       idle_timeout_minutes: float) -> dict[str, Any]:
    """`cluster.yaml` as the fake cloud runs it: its node types untouched, its provider
    swapped for the fake cloud, no commands (the nodes are processes already set up)."""
    config = copy.deepcopy(cluster)
    config["provider"] = {
        "type": "external", "module": PROVIDER,
        "gcs_address": gcs_address, "head_node_id": FAKE_HEAD_NODE_ID,
        "head_node_type": cluster["head_node_type"], "state_dir": str(state_dir),
        "launch_multiple": True, "use_node_id_as_ip": True,
        "disable_node_updaters": True, "disable_launch_config_check": True,
    }
    config["idle_timeout_minutes"] = idle_timeout_minutes
    for key in ("docker", "file_mounts", "initialization_commands", "setup_commands",
                "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands", "rsync_exclude"):
        config.pop(key, None)
    config.update(file_mounts={}, cluster_synced_files=[], file_mounts_sync_continuously=False,
                  initialization_commands=[], setup_commands=[], head_setup_commands=[],
                  worker_setup_commands=[], head_start_ray_commands=[],
                  worker_start_ray_commands=[])
    return config


def serve_deploy_config(serve_config: dict[str, Any], *, data_dir: Path,
                        delays: dict[str, float],
                        autoscaling: dict[str, float] | None = None) -> dict[str, Any]:
    """`serve_config.yaml` with demo weights on the CPU and short autoscaling delays;
    every other choice (the GPU it asks for, replicas, queue, slots) is the file's."""
    config = copy.deepcopy(serve_config)
    app = config["applications"][0]
    args = app["args"]
    for key in ("clip_checkpoint", "upscaler_checkpoint", "models"):
        args.pop(key, None)
    args.update(data_dir=str(data_dir), device="cpu", **delays)
    for deployment in app.get("deployments", []):
        deployment.setdefault("autoscaling_config", {}).update(delays, **(autoscaling or {}))
    return config


@dataclass
class FakeCluster:
    """A Ray head (CPU only) whose autoscaler launches GPU nodes on this machine."""

    root: Path
    gcs_port: int
    cluster: dict[str, Any]
    head: subprocess.Popen
    log: Any
    token: str
    extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def state_dir(self) -> Path:
        return self.root / "cloud"

    @classmethod
    def start(cls, *, idle_timeout_minutes: float = 0.1) -> FakeCluster:
        cluster = yaml.safe_load(CLUSTER_YAML.read_text())
        root = Path(tempfile.mkdtemp(prefix="cgr-", dir="/tmp"))  # short: unix socket paths
        (root / "cloud").mkdir()
        port = free_port()
        config_path = root / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(autoscaling_config(
            cluster, state_dir=root / "cloud", gcs_address=f"127.0.0.1:{port}",
            idle_timeout_minutes=idle_timeout_minutes)))
        head_type = cluster["head_node_type"]
        head_resources = dict(cluster["available_node_types"][head_type]["resources"])
        token = secrets.token_hex(32)  # Ray's token authentication, on as in production
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CLIPGAN_", "RAY_"))}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        env.update(  # what `ray up` puts in the head's start command, plus the fake cloud's
            RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
            RAY_NODE_TYPE_NAME=head_type, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        log = (root / "head.log").open("w")
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
             f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={int(head_resources.pop('CPU', 0))}",
             f"--num-gpus={int(head_resources.pop('GPU', 0))}",
             f"--ray-client-server-port={free_port()}", "--include-dashboard=false",
             f"--dashboard-port={free_port()}",
             "--dashboard-agent-listen-port=0", f"--temp-dir={root / 'ray'}",
             f"--autoscaling-config={config_path}", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=ROOT)
        self = cls(root=root, gcs_port=port, cluster=cluster, head=head, log=log, token=token)
        try:
            self._until(lambda: (self.state_dir / LEDGER_FILE).exists(),
                        "the autoscaler's provider to start", timeout=90)
        except BaseException:
            self.stop()
            raise
        return self

    # --- the cloud -------------------------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        path = self.state_dir / LEDGER_FILE
        return json.loads(path.read_text()) if path.exists() else {"instances": {}}

    def gpu_instances(self) -> dict[str, dict[str, Any]]:
        """Worker instances the cloud runs now (the head is not an instance here)."""
        return self.ledger()["instances"]

    def spot_short(self, short: bool) -> None:
        flag = self.state_dir / SPOT_SHORT_FILE
        if short:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def kill_instance(self, node_id: str) -> None:
        """The machine is gone: its raylet and every process under it, SIGKILL."""
        instance = self.gpu_instances()[node_id]
        doomed = set(instance["pids"])
        for pid in list(doomed):
            doomed |= _descendants(pid)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- Serve and the web backend, as on the head node ---------------------------------
    def deploy(self, *, data_dir: Path, delays: dict[str, float],
               autoscaling: dict[str, float] | None = None) -> dict[str, Any]:
        """`serve deploy serve_config.yaml`, the way the dashboard's REST API does it."""
        config = serve_deploy_config(yaml.safe_load(SERVE_CONFIG.read_text()),
                                     data_dir=data_dir, delays=delays, autoscaling=autoscaling)
        path = self.root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        script = (
            "import sys, yaml, ray\n"
            "from ray.serve._private.api import serve_start\n"
            "from ray.serve.schema import ServeDeploySchema\n"
            "config = ServeDeploySchema.model_validate(yaml.safe_load(open(sys.argv[2])))\n"
            "ray.init(address=sys.argv[1], namespace='serve', log_to_driver=False)\n"
            "client = serve_start(http_options=config.http_options.model_dump(),\n"
            "                     proxy_location=config.proxy_location)\n"
            "client.deploy_apps(config, _blocking=False)\n")
        done = subprocess.run([sys.executable, "-c", script, self.address, str(path)],
                              env=self._env(), cwd=ROOT, timeout=180, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise AssertionError(f"serve deploy failed:\n{done.stderr[-4000:]}")
        return config

    def start_web(self, data_dir: Path, **settings: str) -> WebNode:
        env = {**self._env(), "CLIPGAN_DATA_DIR": str(data_dir), "CLIPGAN_ENV": "dev",
               "CLIPGAN_ML_TRANSPORT": "ray", "CLIPGAN_RAY_ADDRESS": self.address,
               **{f"CLIPGAN_{k.upper()}": v for k, v in settings.items()}}
        node = WebNode.start(env, self.root / "web.log")
        self.extra.append(node.proc)
        return node

    def watch_serve(self) -> ServeWatcher:
        """A driver process that reports what the Serve controller sees, on request
        (this test process never joins the cluster: Ray's state stays out of it)."""
        watcher = ServeWatcher.start(self.address, self._env(), self.root / "watcher.log")
        self.extra.append(watcher.proc)
        return watcher

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPGAN_", "RAY_"))}
        env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN=self.token)
        return env

    # --- the end ---------------------------------------------------------------------
    def stop(self) -> None:
        """Every process this cluster started, by id: its sessions, then stragglers
        whose command line names its temp directory."""
        for proc in [*self.extra, self.head]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in [*self.extra, self.head]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in _processes_naming(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        if not os.environ.get("CLIPGAN_KEEP_CLUSTER_LOGS"):  # set it to read Ray's logs
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _until(condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(0.5)


_WATCHER = """
import json, sys, ray
from ray import serve
ray.init(address=sys.argv[1], namespace="serve", log_to_driver=False,
         _node_ip_address="127.0.0.1")
for _ in sys.stdin:
    app = serve.status().applications.get("clipgan")
    generator = app.deployments.get("Generator") if app else None
    print("@@" + json.dumps({
        "app": str(getattr(app.status, "value", app.status)) if app else "MISSING",
        "running": int(generator.replica_states.get("RUNNING", 0)) if generator else 0,
    }), flush=True)
"""


@dataclass
class ServeWatcher:
    """Asks the Serve controller (never a replica) how the app and its replicas are."""

    proc: subprocess.Popen

    @classmethod
    def start(cls, address: str, env: dict[str, str], log_path: Path) -> ServeWatcher:
        proc = subprocess.Popen([sys.executable, "-c", _WATCHER, address], env=env, cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log_path.open("a"), text=True, start_new_session=True)
        return cls(proc=proc)

    def status(self) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        while line := self.proc.stdout.readline():
            if line.startswith("@@"):
                return dict(json.loads(line[2:]))
        raise AssertionError("the Serve watcher exited (its log: watcher.log)")


@dataclass
class WebNode:
    """``clipgan web`` on the head node, as operators run it beside Ray."""

    proc: subprocess.Popen
    base: str

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path) -> WebNode:
        port = free_port()
        log = log_path.open("a")
        proc = subprocess.Popen([sys.executable, "-m", "clipgan.cli", "web", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, path="/healthz", timeout=120)
        return cls(proc=proc, base=base)

    def client(self) -> httpx.Client:
        """A signed-in user's client."""
        name = "u" + secrets.token_hex(4)
        httpx.post(f"{self.base}/v1/users", json={
            "username": name, "email": f"{name}@example.com",
            "password": "password123"}).raise_for_status()
        token = httpx.post(f"{self.base}/v1/auth/token", data={
            "username": name, "password": "password123"}).json()["access_token"]
        return httpx.Client(base_url=self.base, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids
