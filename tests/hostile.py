"""A deliberately misbehaving API on a real loopback socket: each test says what it answers."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def conversation(cid: str, count: int = 1, updated: str = "2024-06-12T14:50:00Z", **extra):
    record = {"id": cid, "createdAt": "2024-06-10T09:15:00Z", "updatedAt": updated,
              "lastMessageAt": "2024-06-12T14:45:00Z" if count else None, "messageCount": count,
              "status": "open", "subject": f"subject {cid}", "participantName": "P",
              "participantEmail": "p@example.com", "externalParticipantId": None,
              "externalThreadId": None, "surfaceId": "surface_001", "timezone": None}
    record.update(extra)
    return record


def message(cid: str, n: int, **extra):
    record = {"id": f"{cid}_m{n:05d}", "conversationId": cid, "role": "user",
              "createdAt": f"2024-06-10T09:{n // 60 % 60:02d}:{n % 60:02d}Z",
              "content": f"message {n}", "direction": None, "externalMessageId": None,
              "flowStepResultId": None, "metadata": None}
    record.update(extra)
    return record


def page(records, next_cursor=None, has_more=None, total=None):
    return {"data": records, "pagination": {
        "hasMore": bool(next_cursor) if has_more is None else has_more,
        "nextCursor": next_cursor, "totalCount": len(records) if total is None else total}}


class HostileServer:
    """`respond(path, query) -> (status, headers, body)`; body may be bytes, str or JSON data.
    A "Content-Length" header of "" sends the body without one, ended by closing."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                outer.requests.append((parts.path, query, dict(self.headers)))
                status, headers, body = outer.respond(parts.path, query)
                if not isinstance(body, (bytes, str)):
                    body = json.dumps(body)
                if isinstance(body, str):
                    body = body.encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                undeclared = headers.pop("Content-Length", None) == ""   # the body ends at close
                for k, v in headers.items():
                    self.send_header(k, v)
                if undeclared:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, prefix: str) -> int:
        return sum(1 for path, _, _ in self.requests if path.startswith(prefix))
