"""A cloud on one machine for Ray's real autoscaler: each "instance" is a Ray node
(its own raylet) started on 127.0.0.1, with the resources `cluster.yaml` declares.

It is Ray's ``FakeMultiNodeProvider`` with three things a cloud has and it lacks:

* a spot market that can run out: while ``<state>/spot_short`` exists, a launch asking
  for spot fails as EC2's does (``NodeLaunchException("InsufficientInstanceCapacity")``);
* instances that die: an instance whose raylet is gone (a reclaimed spot node, a lost
  machine) is reported terminated, as EC2 reports it;
* a ledger the tests read (``<state>/nodes.json``): every instance with its type,
  market, process ids, and every refused launch.

The spot fallback under test is the production mixin (``SpotFallback``), stacked on
this provider exactly as on Ray's AWS provider in ``ml_backend.autoscaler.aws``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import ray
import ray._private.ray_constants as ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from ml_backend.autoscaler.spot_fallback import MARKET_TAG, SpotFallback, is_spot

SPOT_SHORT_FILE = "spot_short"
LEDGER_FILE = "nodes.json"


class FakeCloudProvider(FakeMultiNodeProvider):
    """Instances on this machine; spot can be short; dead instances disappear."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._state = Path(provider_config["state_dir"])
        self._host = provider_config.get("node_ip", "127.0.0.1")
        head_tags = self._nodes[self._head_node_id]["tags"]
        head_tags[TAG_RAY_USER_NODE_TYPE] = provider_config["head_node_type"]
        self._refused: list[dict[str, Any]] = []
        self._gone: list[str] = []
        self._launched = 0
        self._write_ledger()

    # --- the cloud's view of its instances -------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        with self.lock:
            for node_id in [n for n, v in self._nodes.items() if "node" in v]:
                if not _alive(self._raylet_pid(node_id)):  # reclaimed or lost: terminated
                    node = self._nodes.pop(node_id)
                    node["node"].kill_all_processes(check_alive=False, allow_graceful=False)
                    self._gone.append(node_id)
                    self._write_ledger()
            return super().non_terminated_nodes(tag_filters)

    def _create_node_with_resources_and_labels(
            self, node_config: dict[str, Any], tags: dict[str, str], count: int,
            resources: dict[str, float], labels: dict[str, str]) -> None:
        node_type = tags[TAG_RAY_USER_NODE_TYPE]
        if is_spot(node_config) and (self._state / SPOT_SHORT_FILE).exists():
            with self.lock:
                self._refused.append({"type": node_type, "at": time.time()})
                self._write_ledger()
            raise NodeLaunchException(
                category="InsufficientInstanceCapacity",
                description="We currently do not have sufficient g5.xlarge capacity in "
                            "the Availability Zone you requested (fake cloud).",
                src_exc_info=None)
        resources = dict(resources)
        with self.lock:
            node_id = self._next_hex_node_id()
            self._launched += 1
            params = ray._private.parameter.RayParams(
                node_ip_address=self._host,
                min_worker_port=0, max_worker_port=0,
                dashboard_port=None, dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources, labels=labels,
                redis_address=self._gcs_address, gcs_address=self._gcs_address,
                env_vars={
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                    "RAY_CLOUD_INSTANCE_ID": node_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                })
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False,
                                          spawn_reaper=False)
            self._nodes[node_id] = {
                "tags": {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                         TAG_RAY_NODE_NAME: node_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                         **tags},
                "node": node, "launched_at": time.time(),
            }
            self._write_ledger()

    def terminate_node(self, node_id: str) -> None:
        super().terminate_node(node_id)
        with self.lock:
            self._write_ledger()

    # --- the ledger the tests read ---------------------------------------------------
    def _raylet_pid(self, node_id: str) -> int | None:
        processes = self._nodes[node_id]["node"].all_processes
        raylets = processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []
        return raylets[0].process.pid if raylets else None

    def _write_ledger(self) -> None:
        instances = {}
        for node_id, value in self._nodes.items():
            if "node" not in value:
                continue
            pids = [info.process.pid for infos in value["node"].all_processes.values()
                    for info in infos]
            instances[node_id] = {
                "type": value["tags"][TAG_RAY_USER_NODE_TYPE],
                "market": value["tags"].get(MARKET_TAG),
                "launched_at": value["launched_at"],
                "raylet_pid": self._raylet_pid(node_id), "pids": pids,
            }
        ledger = {"instances": instances, "refused": self._refused, "gone": self._gone,
                  "launched": self._launched,
                  "written_at": time.time()}
        tmp = self._state / f".{LEDGER_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(ledger))
        tmp.replace(self._state / LEDGER_FILE)


class SpotFallbackFakeCloudProvider(SpotFallback, FakeCloudProvider):
    """What `cluster.yaml`'s provider is on AWS, on the fake cloud."""


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False
