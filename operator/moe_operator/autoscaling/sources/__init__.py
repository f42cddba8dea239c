"""Where the autoscaler's numbers come from: Prometheus (PromQL) or a direct scrape of the runtime's /metrics.

Both return an ``Observation`` (or None when they have nothing: the policy then holds). Metric names and
labels are fixed by docs/contracts.md section 4.
"""
