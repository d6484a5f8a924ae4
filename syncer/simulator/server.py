"""The fake Runtype API over a real socket: threaded, HTTP/1.1 keep-alive, TCP_NODELAY."""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .app import DropConnection, handle
from .behaviour import Behaviour
from .upstream import Upstream


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections are closed after this
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.simulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.simulator._track(self.connection, add=False)

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self) -> None:
        simulator = self.server.simulator
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = handle(simulator.upstream, simulator.behaviour,
                                              self.command, url.path, query,
                                              dict(self.headers.items()), body)
        except DropConnection:
            simulator._log(self.command, url.path, query, 0)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        simulator._log(self.command, url.path, query, status)
        self.send_response_only(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    simulator: "SimulatorServer"

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (timeouts, drops) are normal here; anything else is printed."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class SimulatorServer:
    """Serve an Upstream on a loopback port; `requests` logs (method, path, query, status)."""

    def __init__(self, upstream: Upstream, behaviour: Behaviour | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.behaviour = behaviour or upstream.behaviour
        upstream.behaviour = self.behaviour
        self.host, self.port = host, port
        self.base_url: str | None = None
        self.requests: list[tuple[str, str, dict, int]] = []
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.simulator = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="runtype-simulator", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._log_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> "SimulatorServer":
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._log_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _log(self, method: str, path: str, query: dict, status: int) -> None:
        with self._log_lock:
            self.requests.append((method, path, query, status))

    def reset_log(self) -> None:
        with self._log_lock:
            self.requests.clear()

    def count(self, path_prefix: str | None = None, method: str | None = "GET") -> int:
        """Logged requests matching the path prefix and method (None matches any)."""
        with self._log_lock:
            return sum(1 for m, p, _, _ in self.requests
                       if (method is None or m == method)
                       and (path_prefix is None or p.startswith(path_prefix)))
