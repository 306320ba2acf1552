"""The node provider `cluster.yaml` names: Ray's AWS provider with the spot fallback.

Loaded by the autoscaler on the head node (``provider: {type: external, module:
ml_backend.autoscaler.aws.SpotFallbackAWSNodeProvider}``) and by ``ray up`` on the
operator's machine; both have the project installed. Everything else, the AWS
bootstrap (IAM role, security group, subnets) included, is Ray's own provider's.
"""

from __future__ import annotations

from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

from ml_backend.autoscaler.spot_fallback import SpotFallback

__all__ = ["SpotFallbackAWSNodeProvider"]


class SpotFallbackAWSNodeProvider(SpotFallback, AWSNodeProvider):
    """AWS nodes, spot first and on-demand when EC2 has no spot capacity for a launch."""
