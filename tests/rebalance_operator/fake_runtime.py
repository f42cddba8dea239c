"""A tiny in-test HTTP server speaking the runtime admin API of docs/contracts.md section 7.

For the loop's offline tests and the control-plane error paths (401, 404, a posted placement converging); the
end-to-end test uses the real torch runtime instead.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeRuntime:
    """``pools``: {pool: placement JSON}; each pool starts with ``replicas`` replicas on placement "initial".
    ``admin_on`` False answers 404 like a runtime without MOE_ADMIN_TOKEN; ``follow`` False keeps the replicas on
    their placement after a POST (a rebalance in progress)."""

    def __init__(self, token: str, pools: dict[str, dict], replicas: int = 2):
        self.token, self.admin_on, self.follow = token, True, True
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        self.pools = {}
        for name, doc in pools.items():
            shape = (doc["numLayers"], doc["numExperts"])
            self.pools[name] = {"placementId": "initial", "placement": doc, "replicas": {
                f"{name}-r{i}": {"placementId": "initial", "expertTokens": [[0] * shape[1] for _ in range(shape[0])]}
                for i in range(replicas)}}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, pool: str, layer_loads: list[list[int]], replica: int | None = None) -> None:
        """Add tokens per [layer][expert] to one replica (default: split over all replicas)."""
        with self.lock:
            reps = list(self.pools[pool]["replicas"].values())
            targets = reps if replica is None else [reps[replica]]
            for rep in targets:
                for row, add in zip(rep["expertTokens"], layer_loads):
                    for e, x in enumerate(add):
                        row[e] += x // len(targets)

    def converge(self) -> None:
        with self.lock:
            for p in self.pools.values():
                for rep in p["replicas"].values():
                    rep["placementId"] = p["placementId"]

    def answer(self) -> dict:
        with self.lock:
            out = {}
            for name, p in self.pools.items():
                reps = [{"replica": rid, "placementId": r["placementId"], "expertTokens": r["expertTokens"],
                         "lastReportAge": 0.5} for rid, r in p["replicas"].items()]
                total = (
                    [
                        [sum(r["expertTokens"][layer][e] for r in reps) for e in range(len(reps[0]["expertTokens"][0]))]
                        for layer in range(len(reps[0]["expertTokens"]))
                    ]
                    if reps
                    else []
                )
                out[name] = {"placementId": p["placementId"], "placement": p["placement"], "expertTokens": total,
                             "replicas": reps}
            return {"pools": json.loads(json.dumps(out))}

    def close(self) -> None:
        """Stop serving (idempotent): the port then refuses connections."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _err(self, code: int, message: str, err_code: str | None = None) -> None:
                self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": err_code}})

            def _authorized(self) -> bool:
                if not fake.admin_on:
                    self._err(404, "Not Found")
                    return False
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._err(401, "missing or wrong admin token")
                    return False
                return True

            def do_GET(self):
                if self.path != "/admin/v1/experts":
                    return self._err(404, "Not Found")
                if self._authorized():
                    self._send(200, fake.answer())

            def do_POST(self):
                if self.path != "/admin/v1/placement":
                    return self._err(404, "Not Found")
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                pool, doc = body.get("pool"), body.get("placement")
                if pool not in fake.pools:
                    return self._err(404, f"unknown pool {pool!r}", "unknown_pool")   # as moe_runtime.admin_api
                if not isinstance(doc, dict) or (doc.get("numLayers"), doc.get("numExperts")) != (
                        fake.pools[pool]["placement"]["numLayers"], fake.pools[pool]["placement"]["numExperts"]):
                    return self._err(400, "invalid placement")
                pid = "p-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
                with fake.lock:
                    fake.posts.append(body)
                    fake.pools[pool]["placementId"], fake.pools[pool]["placement"] = pid, doc
                if fake.follow:
                    fake.converge()
                self._send(202, {"pool": pool, "placementId": pid})

        return Handler
