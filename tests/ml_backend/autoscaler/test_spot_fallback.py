"""The spot fallback's decisions, on a provider that answers as EC2 would (the whole
path under Ray's real autoscaler: test_autoscaling.py)."""

from __future__ import annotations

from typing import Any

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException

from ml_backend.autoscaler.aws import SpotFallbackAWSNodeProvider
from ml_backend.autoscaler.spot_fallback import MARKET_TAG, SPOT_SHORTAGE_CODES, SpotFallback

SPOT = {"InstanceType": "g5.xlarge", "InstanceMarketOptions": {"MarketType": "spot"}}


class Cloud:
    """Launches as asked, unless told to refuse spot with ``refusal``."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.refusal = refusal
        self.launched: list[tuple[dict[str, Any], dict[str, str]]] = []

    def create_node_with_resources_and_labels(self, node_config: dict[str, Any],
                                              tags: dict[str, str], count: int,
                                              resources: dict[str, float],
                                              labels: dict[str, str]) -> None:
        if self.refusal is not None and "InstanceMarketOptions" in node_config:
            raise self.refusal
        self.launched.append((node_config, tags))


class FallbackCloud(SpotFallback, Cloud):
    pass


def _launch(cloud: FallbackCloud, config: dict[str, Any]) -> None:
    cloud.create_node_with_resources_and_labels(config, {"ray-user-node-type": "gpu_spot"}, 1,
                                                {"GPU": 1}, {})


def _shortage(code: str) -> NodeLaunchException:
    return NodeLaunchException(category=code, description="no capacity", src_exc_info=None)


def test_spot_is_tried_first_and_tagged() -> None:
    cloud = FallbackCloud()
    _launch(cloud, SPOT)
    ((config, tags),) = cloud.launched
    assert config == SPOT and tags[MARKET_TAG] == "spot"


@pytest.mark.parametrize("code", sorted(SPOT_SHORTAGE_CODES))
def test_every_capacity_answer_falls_back_to_on_demand_as_the_same_type(code: str) -> None:
    cloud = FallbackCloud(refusal=_shortage(code))
    _launch(cloud, SPOT)
    ((config, tags),) = cloud.launched
    assert "InstanceMarketOptions" not in config and config["InstanceType"] == "g5.xlarge"
    assert tags[MARKET_TAG] == "on-demand" and tags["ray-user-node-type"] == "gpu_spot"
    assert "InstanceMarketOptions" in SPOT  # the node type's own config is untouched


@pytest.mark.parametrize("refusal", [
    _shortage("InvalidAMIID.NotFound"), _shortage("UnauthorizedOperation"),
    RuntimeError("boto is broken"),
])
def test_a_broken_request_fails_loudly_instead(refusal: Exception) -> None:
    cloud = FallbackCloud(refusal=refusal)
    with pytest.raises(type(refusal)):
        _launch(cloud, SPOT)
    assert cloud.launched == []


def test_on_demand_types_launch_once_as_they_are() -> None:
    cloud = FallbackCloud(refusal=_shortage("InsufficientInstanceCapacity"))
    _launch(cloud, {"InstanceType": "g5.xlarge"})
    ((config, tags),) = cloud.launched
    assert config == {"InstanceType": "g5.xlarge"} and tags[MARKET_TAG] == "on-demand"


def test_cluster_yaml_provider_is_ray_aws_provider_with_the_fallback_first() -> None:
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    mro = SpotFallbackAWSNodeProvider.__mro__
    assert mro.index(SpotFallback) < mro.index(AWSNodeProvider)
    assert SpotFallbackAWSNodeProvider.bootstrap_config is AWSNodeProvider.bootstrap_config


def test_ray_loads_the_provider_cluster_yaml_names() -> None:
    from pathlib import Path

    import yaml
    from ray.autoscaler._private.providers import _get_node_provider_cls

    config = yaml.safe_load((Path(__file__).parents[3] / "cluster.yaml").read_text())
    assert _get_node_provider_cls(config["provider"]) is SpotFallbackAWSNodeProvider
