"""Bearer tokens for the mesh's HTTP gateways (``mesh a2a serve``, ``mesh mcp serve
--http``) and its web view (``mesh ui``).

A gateway acts in the mesh with its own key: whoever reaches its HTTP port submits,
cancels and answers as that key. On loopback that is whoever runs processes on the
machine; on any other address it is whoever reaches the port, so a gateway listening
there must be given a token (``--token-file``), which every request but the public
discovery document (the A2A agent card) must carry as ``Authorization: Bearer
<token>``. The token is a shared secret in a file kept like a seed: readable by its
owner only. A browser cannot add a header to a page load or an event stream, so the web
view takes the token once in its URL (``/?token=...``) and keeps it in a cookie that
only this origin sends (``HttpOnly``, ``SameSite=Strict``: another site's page cannot
make the browser act with it).
"""

from __future__ import annotations

import contextlib
import hmac
import http.cookies
import ipaddress
import json
import os
import stat
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TokenError", "MIN_TOKEN_CHARS", "load_token", "check_exposure", "RequireToken"]

#: a token shorter than this is guessable
MIN_TOKEN_CHARS = 16
_MAKE = "make one with `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE`"


class TokenError(ValueError):
    """A token file that cannot be used, or a gateway exposed without one."""


def load_token(path: Path | str) -> str:
    """The token in ``path``: one line, at least :data:`MIN_TOKEN_CHARS` characters, in
    a file nobody else may read."""
    path = Path(path)
    try:
        info = path.stat()
        if os.name == "posix" and info.st_mode & 0o077:
            raise TokenError(
                f"token file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): anyone who reads "
                f"it can act as the gateway; run `chmod 600 {path}`"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist; {_MAKE}") from None
    except UnicodeDecodeError:
        raise TokenError(f"token file {path} is not text; {_MAKE}") from None
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    token = text.strip()
    if "\n" in token or any(c.isspace() for c in token):
        raise TokenError(f"token file {path} must hold one token on one line, without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"the token in {path} is {len(token)} characters: use at least {MIN_TOKEN_CHARS}; {_MAKE}")
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(host: str, token: str | None, *, what: str) -> None:
    """Refuse to serve ``what`` beyond loopback without a token."""
    if token is None and not _loopback(host):
        raise TokenError(
            f"{what} on {host} would let anyone who reaches the port act as its key: pass --token-file FILE "
            f"(clients then send `Authorization: Bearer <token>`; {_MAKE}), or listen on 127.0.0.1"
        )


class RequireToken:
    """ASGI middleware: an HTTP request without ``Authorization: Bearer <token>`` gets
    401, but for a GET of one of ``public`` (discovery documents). With ``cookie`` (a
    browser's page), the token is also taken from that cookie, and a GET carrying it as
    ``?token=`` sets the cookie and reloads the page without it."""

    def __init__(self, app: Any, token: str, *, public: tuple[str, ...] = (), cookie: str | None = None) -> None:
        self.app = app
        self._token = token.encode()
        self._expected = b"Bearer " + self._token
        self.public = frozenset(public)
        self.cookie = cookie

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope.get("method") == "GET" and scope.get("path") in self.public):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
            await self.app(scope, receive, send)
            return
        if self.cookie is not None:
            jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
            with contextlib.suppress(http.cookies.CookieError):  # a garbled header: no cookie
                jar.load(headers.get(b"cookie", b"").decode("latin-1"))
            morsel = jar.get(self.cookie)
            if morsel is not None and hmac.compare_digest(morsel.value.encode(), self._token):
                await self.app(scope, receive, send)
                return
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[-1].encode()
            if scope.get("method") == "GET" and hmac.compare_digest(given, self._token):
                await self._keep(scope, send)
                return
        await _respond(send, 401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"})

    async def _keep(self, scope: Any, send: Any) -> None:
        """Set the cookie and send the browser to the page without the token in its URL."""
        assert self.cookie is not None
        cookie = f"{self.cookie}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
        await _respond(
            send, 303, None, [(b"location", scope.get("path", "/").encode()), (b"set-cookie", cookie.encode())]
        )


async def _respond(
    send: Any, status: int, body: dict[str, str] | None, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    if status == 401:
        out.append((b"www-authenticate", b'Bearer realm="agent-mesh"'))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": data})
