"""kopf handlers (thin glue): importing this package registers them with kopf's default registry."""
from . import autoscale, drift_sweep, moedeployment, podwatch, rayservice, rebalance  # noqa: F401
