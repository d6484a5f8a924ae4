"""A server that answers too slowly, on a real loopback socket (plain or TLS): what httpx's
per-read timeout never catches. `tls_files` makes a self-signed certificate for it."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading


def tls_files(directory) -> tuple[str, str] | None:
    """(certificate, key) for 127.0.0.1, self-signed, made with the openssl command; None
    where there is no openssl."""
    if shutil.which("openssl") is None:
        return None
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def server_context(files: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    return context


class Trickler:
    """Answers every request slowly: `body` sends headers announcing 100,000 bytes, then a byte
    a second; `headers` sends the status line, then header bytes one a second; `silent` reads
    the request and says nothing. With `tls` (a server context), over TLS."""

    def __init__(self, mode: str = "body", tls: ssl.SSLContext | None = None):
        self.mode = mode
        self._tls = tls
        self.requests = 0
        self._closing = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return
                request += data
            with self._lock:
                self.requests += 1
            if self.mode == "body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n")
            elif self.mode == "headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self._closing.wait(1.0):
                if self.mode != "silent":
                    conn.sendall(b" " if self.mode == "body" else b"a")
        except OSError:
            pass
        finally:
            conn.close()


def fast_bounds(stop: threading.Event | None = None, rate: float = 20.0):
    """Request bounds whose clock runs `rate` times faster than real time, so that a 2 s
    timeout or the stop grace passes in a twentieth of it (and socket waits are as short)."""
    import time

    from syncer.transport import SLICE, Bounds
    start = time.monotonic()
    return Bounds(stop or threading.Event(),
                  clock=lambda: start + (time.monotonic() - start) * rate,
                  slice_seconds=SLICE / rate)
