"""The metrics sources against hostile servers (issue 14 items 7 and 10): a total deadline per observation, a cap on
the body read, no body echoed into the reason, TLS verified. Real HTTP servers on 127.0.0.1 (tests/slow_http.py)."""
from __future__ import annotations

import pytest

from moe_operator.autoscaling.sources.prometheus import PrometheusSource
from moe_operator.autoscaling.sources.scrape import ScrapeSource
from slow_http import SECRET, Server, call_in_thread, self_signed

GENEROUS_S = 20.0   # the deadline below is 1-2 s; without one the calls below never return


@pytest.fixture
def server(request):
    servers = []

    def make(mode, **kw):
        servers.append(Server(mode, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def sources(url):
    return {"scrape": ScrapeSource(f"{url}/metrics", model="m", timeout_s=1.5),
            "prometheus": PrometheusSource(url, model="m", timeout_s=1.5)}


@pytest.mark.parametrize("kind", ["scrape", "prometheus"])
@pytest.mark.parametrize("mode", ["drip", "drip_head"])
def test_a_dripping_url_fails_within_the_deadline(server, kind, mode):
    """A byte every 0.5 s (each read well within any per-read timeout): the observation still ends at its total
    deadline, as missing metrics with a reason that says so."""
    s = server(mode, drip_s=0.5)
    src = sources(s.url)[kind]
    returned, value, _ = call_in_thread(src.observe, GENEROUS_S)
    assert returned, f"{kind} observe() still reading a dripping {mode} answer after {GENEROUS_S} s"
    assert value is None and "1.5 s" in src.last_error, src.last_error


@pytest.mark.parametrize("kind", ["scrape", "prometheus"])
@pytest.mark.parametrize("mode", ["big", "big_declared"])
def test_a_50_mb_answer_is_read_only_up_to_the_cap(server, kind, mode):
    s = server(mode)
    src = sources(s.url)[kind]
    returned, value, _ = call_in_thread(src.observe, GENEROUS_S)
    assert returned and value is None
    assert "bytes" in src.last_error and "larger than" in src.last_error, src.last_error
    assert s.sent < 25 * 1024 * 1024, f"the server got {s.sent} bytes out: the body was read far past the cap"


@pytest.mark.parametrize("kind", ["scrape", "prometheus"])
@pytest.mark.parametrize("mode", ["error", "garbage"])
def test_an_answers_body_is_never_echoed_into_the_reason(server, kind, mode):
    """The reason lands in status.lastDecisions[].reason, readable by whoever reads the MoEDeployment: an error
    page or a non-metrics body of whatever the URL points at must not show there."""
    s = server(mode)
    src = sources(s.url)[kind]
    assert src.observe() is None and s.requests
    assert src.last_error and SECRET not in src.last_error, src.last_error


@pytest.mark.parametrize("kind", ["scrape", "prometheus"])
def test_tls_is_verified_a_self_signed_server_is_refused(server, kind, tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    certs = self_signed(tmp_path)
    s = server("ok", tls=certs)
    src = sources(s.url)[kind]
    assert src.observe() is None and "CERTIFICATE_VERIFY_FAILED" in src.last_error, src.last_error
    # the same server is trusted once its CA is given (SSL_CERT_FILE): the refusal above is verification
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "cert.pem"))
    src = sources(s.url)[kind]
    src.observe()
    assert src.last_error is None, src.last_error


def test_a_scrape_waits_longer_than_the_ingress_waits_for_its_replicas():
    """The Serve ingress answers /metrics at SNAPSHOT_S with whatever replicas answered; a scraper with the same
    deadline would drop that answer on a busy fleet, which is when the autoscaler needs it (moectl up's scrapes
    gave up at 5 s = SNAPSHOT_S). Its default deadline leaves the proxy at least as long again."""
    serve_app = pytest.importorskip("moe_runtime.serve_app")
    assert ScrapeSource("http://127.0.0.1:1/metrics").timeout_s >= 2 * serve_app.SNAPSHOT_S
