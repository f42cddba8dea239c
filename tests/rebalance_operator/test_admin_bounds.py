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


@pytest.mark.parametrize("mode", ["error", "garbage"])
def test_a_body_that_is_not_the_admin_apis_error_is_never_quoted(mode):
    """Issue 14 item 10: the admin call's failure reaches status.rebalance[].message; the body must not."""
    from slow_http import SECRET

    s = Server(mode)
    try:
        returned, value, _ = call_in_thread(lambda: rb.post_placement(s.url, "tok", "cpu", {}), GENEROUS_S)
    finally:
        s.stop()
    assert returned and isinstance(value, rb.AdminError), value
    assert SECRET not in str(value) and "html" not in str(value).lower(), value
