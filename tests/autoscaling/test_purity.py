"""The policy core stays pure: importing it pulls in no kopf, kubernetes, ray, torch, httpx or prometheus client."""
import subprocess
import sys

PURE = ["moe_operator.autoscaling.policy", "moe_operator.autoscaling.limits", "moe_operator.autoscaling.mix",
        "moe_operator.autoscaling.actuator", "moe_operator.autoscaling.observation", "moe_operator.autoscaling.model",
        "moe_operator.autoscaling.step", "moe_operator.autoscaling.local_loop"]
FORBIDDEN = ["kopf", "kubernetes", "ray", "torch", "httpx", "prometheus_api_client", "prometheus_client"]


def test_policy_modules_import_nothing_impure():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in PURE)
            + f"bad = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)\nprint(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"pure autoscaling modules imported {out.stdout.strip()}"
