"""Spot first, on-demand when spot capacity is short: one launch, never a stuck type.

Ray 2.60's autoscaler retries a node type whose launches fail (v2 demotes it only after
an allocation *timeout* of an hour; v1's default scorer ignores launch failures), so a
spot shortage left jobs waiting until spot came back. The fallback therefore lives one
level down, in the node provider: a launch of a spot node type that the cloud refuses
for lack of capacity is retried at once with the same node config minus its spot
request. The node keeps its Ray node type (same resources, counted against the same
``max_workers``), carries a ``clipgan-market`` tag saying which market it came from, and
the next launch tries spot again, so nodes are spot again as soon as spot is back.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ray.autoscaler.node_launch_exception import NodeLaunchException

__all__ = ["MARKET_TAG", "ON_DEMAND", "SPOT", "SPOT_SHORTAGE_CODES", "SpotFallback",
           "is_spot", "is_spot_shortage", "on_demand"]

log = logging.getLogger(__name__)

MARKET_TAG = "clipgan-market"
SPOT, ON_DEMAND = "spot", "on-demand"

# EC2's answers that mean "no spot capacity for this request now", as opposed to a
# broken request (bad AMI, missing permission), which must fail loudly, not fall back.
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
SPOT_SHORTAGE_CODES = frozenset({
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
})


def is_spot(node_config: dict[str, Any]) -> bool:
    """Whether a node config asks EC2 for spot capacity."""
    market = node_config.get("InstanceMarketOptions") or {}
    return str(market.get("MarketType", "")).lower() == SPOT


def on_demand(node_config: dict[str, Any]) -> dict[str, Any]:
    """The same node config without its spot request (a copy; the original is kept)."""
    config = copy.deepcopy(node_config)
    config.pop("InstanceMarketOptions", None)
    return config


def is_spot_shortage(exc: BaseException) -> bool:
    """Whether a failed launch is a capacity shortage worth retrying on-demand."""
    return isinstance(exc, NodeLaunchException) and exc.category in SPOT_SHORTAGE_CODES


class SpotFallback:
    """Mixin for a Ray node provider (put it first among the bases).

    Wraps ``create_node_with_resources_and_labels``, the call both of Ray's autoscalers
    make, so the provider below keeps its own retries (the AWS provider tries every
    configured subnet before it gives up) and only its final answer is judged here.
    """

    def create_node_with_resources_and_labels(
            self, node_config: dict[str, Any], tags: dict[str, str], count: int,
            resources: dict[str, float], labels: dict[str, str]) -> Any:
        launch = super().create_node_with_resources_and_labels  # type: ignore[misc]
        if not is_spot(node_config):
            return launch(node_config, {**tags, MARKET_TAG: ON_DEMAND}, count, resources,
                          labels)
        try:
            return launch(node_config, {**tags, MARKET_TAG: SPOT}, count, resources, labels)
        except Exception as exc:
            if not is_spot_shortage(exc):
                raise
            log.warning("spot capacity short (%s); launching %d on-demand instead",
                        getattr(exc, "category", type(exc).__name__), count)
            return launch(on_demand(node_config), {**tags, MARKET_TAG: ON_DEMAND}, count,
                          resources, labels)
