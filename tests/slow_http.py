"""Hostile HTTP servers on 127.0.0.1 for the operator's outbound calls (issue 14 items 7 and 10): one that drips its
answer a byte at a time, one that sends a 50 MB body, one with a self-signed TLS certificate, one that answers an
error with a body that must never be echoed. Each runs in a daemon thread; ``stop()`` ends the drips."""
from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
import time
from pathlib import Path

SECRET = "SECRET-BODY-do-not-echo"
PROM_OK = {"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"kind": "generated"}, "value": [1700000000.0, "10"]}]}}
METRICS_OK = "# a metrics page\nmoe_tokens_total{model=\"m\",kind=\"generated\"} 5\nmoe_queue_depth{model=\"m\"} 0\n"


class Server:
    """``mode``: drip (headers at once, then the body a byte every ``drip_s``), drip_head (the status line itself
    dripped), big (``big_bytes`` of metrics comments without Content-Length), big_declared (Content-Length of
    ``big_bytes``, then the bytes), error (HTTP 400 with SECRET in the body), garbage (200 with SECRET in a body
    that is not the expected format), ok (a valid answer: Prometheus JSON for /api/v1/query, metrics text else)."""

    def __init__(self, mode: str, drip_s: float = 0.5, big_bytes: int = 50 * 1024 * 1024, tls: Path | None = None):
        self.mode, self.drip_s, self.big_bytes = mode, drip_s, big_bytes
        self.requests: list[str] = []
        self.sent = 0
        self.done = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                outer.handle(self)

            do_POST = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls / "cert.pem", tls / "key.pem")
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _write(self, h, data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        self.sent += len(data)

    def handle(self, h) -> None:
        try:
            if self.mode == "drip_head":
                for b in b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}":
                    if self.done.wait(self.drip_s):
                        return
                    self._write(h, bytes([b]))
                return
            if self.mode == "error":
                body = json.dumps({"status": "error", "error": SECRET}).encode()
                status = 400
            elif self.mode == "garbage":
                body, status = f"<html>{SECRET}\x00 not a metrics page {{{{\n".encode(), 200
            elif self.mode == "ok":
                body = (json.dumps(PROM_OK) if h.path.startswith("/api/v1/query") else METRICS_OK).encode()
                status = 200
            else:
                body, status = b"", 200
            h.send_response(status)
            if self.mode == "drip":
                h.send_header("Content-Length", "100000")
            elif self.mode == "big_declared":
                h.send_header("Content-Length", str(self.big_bytes))
            elif self.mode != "big":
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if self.mode == "drip":
                while not self.done.wait(self.drip_s):
                    self._write(h, b"#")
            elif self.mode in ("big", "big_declared"):
                line = b"# " + b"x" * 1021 + b"\n"
                while self.sent < self.big_bytes and not self.done.is_set():
                    self._write(h, line * 64)
            else:
                self._write(h, body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass

    def stop(self) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(directory: Path) -> Path:
    """cert.pem and key.pem of a self-signed certificate for 127.0.0.1 in ``directory`` (which is returned)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory


def call_in_thread(fn, limit_s: float):
    """Run ``fn()`` in a daemon thread; (returned, result or exception, seconds). ``returned`` False: still running
    after ``limit_s`` (the call hangs; the thread is left behind)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["value"] = exc

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    return not t.is_alive(), out.get("value"), time.monotonic() - t0
