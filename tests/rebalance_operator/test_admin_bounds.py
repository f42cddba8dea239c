"""The rebalancer's runtime admin calls against a runtime URL that drips or floods (issue 14 item 7): each call ends
within its total deadline and reads at most its cap. Real HTTP servers on 127.0.0.1 (tests/slow_http.py)."""
from __future__ import annotations

import pytest

from moe_operator.handlers import rebalance as rb
from slow_http import Server, call_in_thread

GENEROUS_S = 20.0


@pytest.mark.parametrize("mode", ["drip", "drip_head"])
def test_a_dripping_runtime_fails_the_admin_call_within_its_deadline(monkeypatch, mode):
    monkeypatch.setattr(rb, "HTTP_TIMEOUT_S", 1.5)
    s = Server(mode, drip_s=0.5)
    try:
        returned, value, _ = call_in_thread(lambda: rb.get_experts(s.url, "tok"), GENEROUS_S)
    finally:
        s.stop()
    assert returned, f"GET /admin/v1/experts still reading a dripping answer after {GENEROUS_S} s"
    assert isinstance(value, rb.AdminError) and value.kind == "Unreachable" and "1.5 s" in str(value), value


@pytest.mark.parametrize("mode", ["big", "big_declared"])
def test_a_flooding_runtime_is_read_only_up_to_the_cap(monkeypatch, mode):
    monkeypatch.setattr(rb, "MAX_ANSWER_BYTES", 1024 * 1024, raising=False)
    s = Server(mode)
    try:
        returned, value, _ = call_in_thread(lambda: rb.get_experts(s.url, "tok"), GENEROUS_S)
    finally:
        s.stop()
    assert returned and isinstance(value, rb.AdminError) and "larger than" in str(value), value
    assert s.sent < 25 * 1024 * 1024, f"the server got {s.sent} bytes out: the answer was read far past the cap"
