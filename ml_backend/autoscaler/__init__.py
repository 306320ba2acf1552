"""What the Ray autoscaler loads on the head node: node providers that fall back from
spot to on-demand capacity (Ray 2.60's own autoscaler does not; see spot_fallback)."""

__all__ = ["aws", "spot_fallback"]
