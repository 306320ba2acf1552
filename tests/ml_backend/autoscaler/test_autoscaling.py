"""Ray's real autoscaler (v2, as ``ray up`` runs it) with `cluster.yaml`'s node types,
on a fake cloud on this machine: the five things an operator relies on.

One cluster for the module; the scenarios run in order (each starts from what the one
before left: zero GPU nodes, or a warm one). Their figures are printed (``-s``) and are
what ``bench/cluster.py`` reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ml_backend.autoscaler import scenarios
from tests.ml_backend.autoscaler.scenarios import Rig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig.start(tmp_path_factory.mktemp("autoscaler"))
    try:
        yield rig
    finally:
        rig.stop()


def test_cold_a_job_launches_a_gpu_node_and_succeeds(rig: Rig) -> None:
    figures = scenarios.cold_start(rig)
    print("cold start:", figures)
    assert figures["node_type"] == "gpu_spot" and figures["market"] == "spot"  # priority 1
    assert figures["node_up_s"] <= figures["replica_running_s"] <= figures["job_done_s"]
    assert figures["starting_gpu_shown_s"] < figures["first_progress_s"]  # "starting a GPU"


def test_idle_the_replica_and_its_node_go_and_stay_gone(rig: Rig) -> None:
    figures = scenarios.idle(rig)
    print("idle:", figures)
    assert figures["readyz_probes"] >= 3
    assert figures["held_at_zero_s"] >= 6 * scenarios.CAPACITY_REFRESH_S


def test_spot_shortage_falls_back_to_on_demand_then_back_to_spot(rig: Rig) -> None:
    figures = scenarios.spot_shortage(rig)
    print("spot shortage:", figures)
    assert figures["fallback_node_s"] < 60
    assert figures["after_shortage_market"] == "spot"


def test_node_loss_mid_job_runs_the_job_again_on_a_new_node(rig: Rig) -> None:
    figures = scenarios.node_loss(rig)
    print("node loss:", figures)


def test_burst_from_zero_all_succeed_and_replicas_follow(rig: Rig) -> None:
    figures = scenarios.burst(rig)
    print("burst:", figures)
    assert figures["most_replicas"] >= 2  # 16 jobs / 8 slots per replica


def test_the_fake_cloud_runs_cluster_yaml_node_types(rig: Rig, tmp_path: Path) -> None:
    """The harness cannot drift from the file: its node types are the file's."""
    import yaml

    from tests.ml_backend.autoscaler.harness import CLUSTER_YAML

    running = yaml.safe_load((rig.cluster.root / "autoscaling.yaml").read_text())
    declared = yaml.safe_load(CLUSTER_YAML.read_text())
    assert running["available_node_types"] == declared["available_node_types"]
    assert running["head_node_type"] == declared["head_node_type"]
    assert running["max_workers"] == declared["max_workers"]
