"""A real HTTP server on 127.0.0.1 that misbehaves on purpose, for the download tests.

Each path serves a body; a list of behaviours per path is used up one request at a time (then
``ok``): ``cut`` (send ``cut`` bytes, then close the connection), ``stall`` (send ``cut`` bytes, then
nothing for as long as the test runs; ``stall0``: nothing at all), ``norange`` (answer 200 with
the whole body whatever the ``Range``), ``html`` (a figshare-like bot-challenge page with status
200), ``html-octet`` (the same page labelled ``application/octet-stream``), ``403``, ``500``,
``gate`` (wait for ``server.gate`` before sending). Unknown paths are 404. Every request and every
body byte sent is counted.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

CHALLENGE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>bots</body></html>"


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    served: dict[str, int] = field(default_factory=dict)  # body bytes sent per path
    cut: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path

    def put(self, path: str, body: bytes, *modes: str) -> str:
        self.files[path], self.modes[path] = body, list(modes)
        return self.url(path)


def _handler(srv: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _send(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            srv.served[self.path] = srv.served.get(self.path, 0) + len(data)

        def _status(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            srv.requests.append((self.path, self.headers.get("Range")))
            body = srv.files.get(self.path)
            if body is None:
                return self._status(404, b"not here")
            queue = srv.modes.get(self.path, [])
            mode = queue.pop(0) if queue else "ok"
            if mode in ("403", "500"):
                return self._status(int(mode), b"no")
            if mode.startswith("html"):
                ctype = "application/octet-stream" if mode == "html-octet" else "text/html; charset=utf-8"
                return self._status(200, CHALLENGE, ctype)
            start, rng = 0, self.headers.get("Range")
            if rng and mode != "norange":
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            data = body[start:]
            if mode == "gate":
                srv.gate.wait(10)
            if mode in ("cut", "stall", "stall0"):
                self._send(data[: 0 if mode == "stall0" else srv.cut])
                if mode.startswith("stall"):
                    srv.stop.wait(10)
                self.close_connection = True
                return
            for i in range(0, len(data), 64 * 1024):
                self._send(data[i : i + 64 * 1024])

    return Handler


@pytest.fixture
def http_server() -> Iterator[Server]:
    """A :class:`Server` listening on 127.0.0.1 (a free port), stopped after the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), None)  # type: ignore[arg-type]
    srv = Server(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(srv)
    httpd.daemon_threads = True
    httpd.block_on_close = False  # a stalled handler must not hold up the next test
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.gate.set()
    httpd.shutdown()
    httpd.server_close()
