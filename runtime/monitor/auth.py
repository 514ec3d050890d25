"""Access control for an exposed monitor: ASGI middleware that lets through only holders of the token.

In: every HTTP request and websocket the monitor's app receives, and the token. Out: the request
passed on, or 401 (HTTP) / a refused websocket (403). The token is accepted as `?token=...` (then
kept in an HttpOnly cookie and the address is rewritten without it), as the cookie, or as an
`Authorization: Bearer ...` header. Only used when the monitor listens beyond 127.0.0.1.
"""
from __future__ import annotations

import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

COOKIE = "populace_monitor_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposed(host: str) -> bool:
    """True when the page can be reached from another machine, so it needs the token."""
    return host not in LOOPBACK


class TokenGate:
    def __init__(self, app, token: str):
        if not token:
            raise ValueError("an exposed monitor needs a non-empty token")
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == "token"), None)
        if self._valid(from_query):
            if scope["type"] == "http" and scope.get("method") == "GET":
                # Keep the token in a cookie and out of the address bar, history and logs.
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
                return await _respond(send, 303, b"", [(b"location", location.encode()), _cookie(self.token)])
            return await self.app(scope, receive, send)
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and self._valid(bearer[7:].strip()):
            return await self.app(scope, receive, send)
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed Cookie header is simply not a token
            cookie = SimpleCookie()
        if COOKIE in cookie and self._valid(cookie[COOKIE].value):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accept answers 403
            return await send({"type": "websocket.close", "code": 1008})
        body = b"401: this monitor needs its token: open the address printed at start (?token=...)\n"
        return await _respond(send, 401, body, [(b"www-authenticate", b"Bearer"),
                                                (b"content-type", b"text/plain; charset=utf-8")])

    def _valid(self, presented: str | None) -> bool:
        return bool(presented) and secrets.compare_digest(presented.encode(), self.token.encode())


def _cookie(token: str) -> tuple[bytes, bytes]:
    return b"set-cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()


async def _respond(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
