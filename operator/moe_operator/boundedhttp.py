"""HTTP calls to URLs the operator does not control (metrics sources, the runtime admin API), bounded (issue 14).

Per-read timeouts alone do not bound a call: a server that sends one byte every few seconds, in its status line,
headers or body, keeps every read within its timeout for ever. Here each call has

* a **total deadline**: every connect, TLS handshake, read and write of the call (and of every call inside a
  ``deadline(...)`` block, which may span several requests) waits at most the time left; past it the call fails
  with ``HttpError`` ("no complete answer within N s");
* a **body cap**: a declared Content-Length above it is refused before reading, and a body without one is read
  only up to it; compressed answers are not asked for (``Accept-Encoding: identity``) and refused, so the cap is
  on the bytes that reach memory;
* **TLS verified** against certifi's CAs, or the bundle in env ``SSL_CERT_FILE`` (a cluster's private CA);
* **no echo**: ``HttpError`` messages say what failed (timeout, refused, TLS, protocol, too large), never what the
  server sent; callers report the status code of a non-2xx answer, not its body.

Proxy environment variables are ignored (``trust_env=False``): these URLs are cluster-internal.
"""
from __future__ import annotations

import json
import os
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import httpcore
import httpx

MiB = 1024 * 1024
_local = threading.local()


class HttpError(Exception):
    """The call failed: unreachable, TLS, deadline, too large, or not HTTP. The message never quotes the answer."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every call of this thread inside the block ends by ``seconds`` from now (nested blocks: the earlier end)."""
    outer = getattr(_local, "end", None)
    end = time.monotonic() + seconds
    _local.end = end if outer is None else min(outer, end)
    try:
        yield
    finally:
        _local.end = outer


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """The per-operation timeout cut to what is left of this thread's deadline; ``late`` raised once it passed."""
    end = getattr(_local, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise late("deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's sync sockets, every wait cut to the calling thread's deadline."""

    def __init__(self):
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                                               socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        return _Stream(self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def ssl_context() -> ssl.SSLContext:
    """Verifying context: the CA bundle of env ``SSL_CERT_FILE`` when set, else certifi's."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


def client(max_connections: int = 64) -> httpx.Client:
    """An httpx client whose connections honour ``deadline`` blocks (keep-alive pool, TLS verified, no proxies)."""
    ctx = ssl_context()
    transport = httpx.HTTPTransport(verify=ctx, trust_env=False)
    # httpx takes no network backend; its transport's pool is swapped for one with the deadline-aware backend
    transport._pool = httpcore.ConnectionPool(ssl_context=ctx, network_backend=_Backend(),
                                              max_connections=max_connections, max_keepalive_connections=20,
                                              keepalive_expiry=5.0)
    return httpx.Client(transport=transport, trust_env=False)


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def describe(exc: BaseException) -> str:
    """What went wrong, in words that quote nothing the server sent (h11 protocol errors quote its bytes)."""
    if isinstance(exc, httpx.ConnectError):   # refused, DNS, TLS verification: the local OS/OpenSSL speaking
        return f"ConnectError: {exc}"
    return type(exc).__name__


def request(c: httpx.Client, method: str, url: str, *, deadline_s: float, max_bytes: int, **kwargs: Any) -> Answer:
    """One call, ended by ``deadline_s`` (or an enclosing ``deadline`` block) with at most ``max_bytes`` of body
    read; any status is returned (the caller judges it), any failure is ``HttpError``."""
    headers = {"Accept-Encoding": "identity", **(kwargs.pop("headers", None) or {})}
    with deadline(deadline_s):
        end = _local.end
        try:
            with c.stream(method, url, headers=headers, timeout=deadline_s, **kwargs) as r:
                if r.headers.get("content-encoding", "identity").lower() != "identity":
                    # the header's value is the server's text: not quoted (no echo of what a URL answers)
                    raise HttpError(f"{method} {url}: a compressed answer, which was not asked for")
                declared = r.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise HttpError(f"{method} {url}: the answer is larger than {max_bytes} bytes "
                                    f"(Content-Length {declared})")
                body = bytearray()
                for chunk in r.iter_bytes():   # = the raw bytes: compressed answers are refused above
                    body += chunk
                    if len(body) > max_bytes:
                        raise HttpError(f"{method} {url}: the answer is larger than {max_bytes} bytes")
                    if time.monotonic() > end:   # a transport without the deadline backend (tests' mocks)
                        raise httpx.ReadTimeout("deadline passed")
                return Answer(r.status_code, bytes(body))
        except httpx.TimeoutException:
            raise HttpError(f"{method} {url}: no complete answer within {deadline_s:g} s") from None
        except httpx.HTTPError as exc:
            raise HttpError(f"{method} {url}: {describe(exc)}") from None
