"""An HTTP proxy in front of moto's S3 server that injects transient S3 errors (a fault we cannot cause
on a healthy local server any other way): the first ``failures`` matching requests get an S3 error
response, the rest are forwarded unchanged — each after ``latency_s`` seconds, the time a request to a
remote store takes that a loopback server does not (``bench/stream.py``)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error."),
}


class FaultyS3Proxy:
    """Forward to ``upstream``; answer the first ``failures`` requests whose method is in ``methods`` with
    ``status`` (503 SlowDown or 500 InternalError)."""

    def __init__(
        self,
        upstream: str,
        failures: int,
        status: int = 503,
        methods: tuple[str, ...] = ("PUT", "GET"),
        latency_s: float = 0.0,
    ):
        self.upstream = urlparse(upstream)
        self.latency_s = latency_s
        self.remaining = failures
        self.injected = 0
        self.forwarded = 0
        self.status = status
        self.methods = methods
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    fail = self.command in proxy.methods and proxy.remaining > 0
                    if fail:
                        proxy.remaining -= 1
                        proxy.injected += 1
                    else:
                        proxy.forwarded += 1
                if fail:
                    code, message = ERRORS[proxy.status]
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>"
                    ).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD answer has no body but names the object's length
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyS3Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
