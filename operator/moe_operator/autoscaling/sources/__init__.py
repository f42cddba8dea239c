"""Where the autoscaler's numbers come from: Prometheus (PromQL) or a direct scrape of the runtime's /metrics.

Both return an ``Observation`` (or None when they have nothing: the policy then holds). Metric names and
labels are fixed by docs/contracts.md section 4 (for ``engine: vllm``, Prometheus reads vLLM's own metrics).
"""
from __future__ import annotations


def source_for(metrics_spec, model: str, default_scrape_url: str | None = None, engine: str = "torch",
               scope: dict[str, str] | None = None):
    """The source spec.autoscaling.metrics asks for (an api MetricsSpec): Prometheus if set, else the scrape URL,
    else ``default_scrape_url`` (``moectl up``); None when there is nowhere to read from (the policy holds).

    engine ``vllm``: Prometheus reads vLLM's engine metrics (sources/prometheus.py ``vllm_queries``); the direct
    scrape reads only the contract metrics of the torch runtime, so it finds nothing there and the policy holds.
    ``scope``: the Prometheus target labels of one MoEDeployment (prometheus.queries); a scrape URL is its own."""
    if metrics_spec is not None and metrics_spec.prometheus is not None:
        from .prometheus import PrometheusSource

        return PrometheusSource(metrics_spec.prometheus.url, model=model, engine=engine, scope=scope)
    url = (
        metrics_spec.scrape.url if metrics_spec is not None and metrics_spec.scrape is not None else default_scrape_url
    )
    if url is None:
        return None
    from .scrape import ScrapeSource

    return ScrapeSource(url, model=model)
