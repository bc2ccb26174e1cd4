"""A small client for the admin API, used by the ``scriptgate`` commands that talk to a server.

Standard library only (urllib), so the CLI needs nothing beyond the server's own
dependencies. Every failure becomes ``AdminError`` with one line a user can act on.
"""

from __future__ import annotations

import http.client
import os
import stat
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

DEFAULT_SERVER = "http://127.0.0.1:10006"
TOKEN_ENV = "SCRIPTGATE_ADMIN_TOKEN"
URL_ENV = "SCRIPTGATE_URL"
PROFILE_ENV = "SCRIPTGATE_PROFILE"
PROFILE_KEYS = frozenset(("server", "token", "token_env", "timeout"))
CHUNK = 64 * 1024


class AdminError(Exception):
    """A request to the admin API failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, code: str = "", details: Any = None,
                 unreachable: bool = False, auth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details  # the server's "details" (e.g. [{line, col, message}] on 422)
        self.unreachable = unreachable  # no HTTP answer at all (refused, timed out, cut off)
        self.auth = auth or status in (401, 403)  # no token, or the server refused it

    @property
    def access(self) -> bool:
        """The server could not be used at all: unreachable, or the token was refused."""
        return self.unreachable or self.auth


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
            raise AdminError(f"no admin token: pass --token, set {TOKEN_ENV} or use a profile (--profile)", auth=True)
        self.actor = self.actor or default_actor()

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.server + path + ("?" + urllib.parse.urlencode(q) if q else "")

    def _open(self, method: str, path: str, body: bytes | None = None, query: dict[str, Any] | None = None,
              content_type: str = "text/plain; charset=utf-8") -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "X-ScriptGate-Actor": self.actor}
        if body is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url(path, query), data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(method, path, exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise AdminError(f"cannot reach {self.server}: {reason}", unreachable=True) from None
        except TimeoutError:
            raise AdminError(f"{method} {path}: no answer from {self.server} within {self.timeout:g} s",
                             unreachable=True) from None
        except OSError as exc:
            raise AdminError(f"{method} {path}: {exc.strerror or exc}", unreachable=True) from None

    def request(self, method: str, path: str, body: bytes | None = None, query: dict[str, Any] | None = None,
                json: Any = None) -> Any:
        """A request answered with JSON; returns the decoded body. ``json``: a JSON request body."""
        content_type = "text/plain; charset=utf-8"
        if json is not None:
            body, content_type = orjson.dumps(json), "application/json"
        with self._open(method, path, body, query, content_type) as resp:
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


# --- where the server and the token come from ------------------------------------------------

def profiles_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "scriptgate" / "profiles.toml"


def load_profile(name: str | None) -> dict[str, Any]:
    """The ``[name]`` table of the profiles file; ``None``: the ``[default]`` table if there is
    one. A named profile that does not exist is an error (a typo must not reach production)."""
    path = profiles_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if name is not None:
            raise AdminError(f"no profile {name!r}: {path} does not exist") from None
        return {}
    except OSError as exc:
        raise AdminError(f"{path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AdminError(f"{path}: not valid TOML ({exc})") from None
    table = doc.get(name or "default")
    if table is None:
        if name is not None:
            raise AdminError(f"no profile {name!r} in {path} (profiles: {', '.join(sorted(doc)) or 'none'})")
        return {}
    if not isinstance(table, dict) or set(table) - PROFILE_KEYS:
        extra = sorted(set(table) - PROFILE_KEYS) if isinstance(table, dict) else []
        raise AdminError(f"{path}: [{name or 'default'}] may only set {', '.join(sorted(PROFILE_KEYS))}"
                         + (f" (not {', '.join(extra)})" if extra else ""))
    if "token" in table:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Like ssh with a readable key: say so, but a warning is enough for a client.
            print(f"scriptgate: warning: {path} holds a token and is readable by others (chmod 600 it)",
                  file=sys.stderr)
    return table


def connect(server: str | None = None, token: str | None = None, profile: str | None = None,
            timeout: float | None = None) -> AdminClient:
    """An AdminClient from, first to last: the flags; the profile named by --profile or
    $SCRIPTGATE_PROFILE; $SCRIPTGATE_URL and $SCRIPTGATE_ADMIN_TOKEN; the [default] profile;
    the built-in default URL."""
    named = profile or os.environ.get(PROFILE_ENV) or None
    table = load_profile(named)

    def from_table(key: str) -> Any:
        if key == "token" and "token_env" in table:
            return os.environ.get(str(table["token_env"])) or None
        return table.get(key)

    if named is not None:  # an explicit profile wins over the environment
        server = server or from_table("server") or os.environ.get(URL_ENV)
        token = token or from_table("token") or os.environ.get(TOKEN_ENV)
    else:
        server = server or os.environ.get(URL_ENV) or from_table("server")
        token = token or os.environ.get(TOKEN_ENV) or from_table("token")
    if timeout is None:
        value = table.get("timeout", 30.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AdminError(f"{profiles_path()}: timeout must be a positive number of seconds")
        timeout = float(value)
    return AdminClient(str(server or DEFAULT_SERVER), str(token) if token else None, timeout=timeout)
