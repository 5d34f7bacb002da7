"""Bearer tokens for the mesh's HTTP gateways (``mesh a2a serve``, ``mesh mcp serve
--http``).

A gateway acts in the mesh with its own key: whoever reaches its HTTP port submits,
cancels and answers as that key. On loopback that is whoever runs processes on the
machine; on any other address it is whoever reaches the port, so a gateway listening
there must be given a token (``--token-file``), which every request but the public
discovery document (the A2A agent card) must carry as ``Authorization: Bearer
<token>``. The token is a shared secret in a file kept like a seed: readable by its
owner only.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import stat
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
    401, but for a GET of one of ``public`` (discovery documents)."""

    def __init__(self, app: Any, token: str, *, public: tuple[str, ...] = ()) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self.public = frozenset(public)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope.get("method") == "GET" and scope.get("path") in self.public):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers") or () if k == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="agent-mesh"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
