"""A small client for the admin API, used by ``scriptgate push / export / kv-snapshot``.

Standard library only (urllib), so the CLI needs nothing beyond the server's own
dependencies. Every failure becomes ``AdminError`` with one line a user can act on.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_SERVER = "http://127.0.0.1:10006"
TOKEN_ENV = "SCRIPTGATE_ADMIN_TOKEN"
CHUNK = 64 * 1024


class AdminError(Exception):
    """A request to the admin API failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, code: str = "", details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details  # the server's "details" (e.g. [{line, col, message}] on 422)


def default_actor() -> str:
    # Shown in the audit log (GET /admin/audit) next to the client address.
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "cli"
    return f"{user}-cli"


@dataclass
class AdminClient:
    server: str = DEFAULT_SERVER
    token: str | None = None
    timeout: float = 30.0
    actor: str = ""

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")
        parsed = urllib.parse.urlsplit(self.server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AdminError(f"--server must be an http(s) URL such as {DEFAULT_SERVER}, got {self.server!r}")
        if not self.token:
            raise AdminError(f"no admin token: pass --token or set {TOKEN_ENV}")
        self.actor = self.actor or default_actor()

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.server + path + ("?" + urllib.parse.urlencode(q) if q else "")

    def _open(self, method: str, path: str, body: bytes | None = None, query: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "X-ScriptGate-Actor": self.actor}
        if body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        req = urllib.request.Request(self.url(path, query), data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(method, path, exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise AdminError(f"cannot reach {self.server}: {reason}") from None
        except TimeoutError:
            raise AdminError(f"{method} {path}: no answer from {self.server} within {self.timeout:g} s") from None
        except OSError as exc:
            raise AdminError(f"{method} {path}: {exc.strerror or exc}") from None

    def request(self, method: str, path: str, body: bytes | None = None, query: dict[str, Any] | None = None) -> Any:
        """A JSON request; returns the decoded JSON body."""
        with self._open(method, path, body, query) as resp:
            raw = resp.read()
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise AdminError(f"{method} {path}: the server did not answer JSON (is {self.server} ScriptGate?)") from None

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """GET a (possibly large) body in chunks, never whole in memory."""
        with self._open("GET", path, None, query) as resp:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (TimeoutError, OSError, http.client.HTTPException) as exc:
                    # HTTPException: IncompleteRead, a response the server cut off
                    raise AdminError(f"GET {path}: connection failed while reading: {exc!r}") from None
                if not chunk:
                    return
                yield chunk

    def get_or_none(self, path: str, query: dict[str, Any] | None = None) -> Any:
        """GET JSON, or None on 404."""
        try:
            return self.request("GET", path, query=query)
        except AdminError as exc:
            if exc.status == 404:
                return None
            raise


def _http_error(method: str, path: str, exc: urllib.error.HTTPError) -> AdminError:
    code, message, details = "", "", None
    try:
        body = orjson.loads(exc.read() or b"null")
        if isinstance(body, dict):
            code, message, details = str(body.get("error", "")), str(body.get("message", "")), body.get("details")
    except (orjson.JSONDecodeError, OSError):
        pass
    if exc.code == 401:
        text = f"unauthorized: wrong or missing admin token (--token or {TOKEN_ENV})"
    elif exc.code == 403:
        text = f"forbidden: {message or 'this client address may not use the admin API'}"
    else:
        text = f"{method} {path}: HTTP {exc.code} {message or exc.reason}".rstrip()
    return AdminError(text, exc.code, code, details)
