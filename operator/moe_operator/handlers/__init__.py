"""kopf handlers (thin glue): importing this package registers them with kopf's default registry."""
from . import autoscale, moedeployment, periodic, podwatch, rayservice, rebalance  # noqa: F401
