"""What every admin handler shares: the token and scope check, query-parameter parsing,
the JSON error replies and the mapping of service, store and body errors to them.

All ``/admin`` endpoints and ``/metrics`` (unless ``metrics_public``) need
``Authorization: Bearer <token>``: the configured admin token or a scoped token
(server/tokens.py), compared in constant time. Each route declares, in the route table
(server/http/admin.py ``routes``), the scope every method needs; a token without it gets 403.
Errors are JSON ``{"error": code, "message": text}``; store outages are 503 and never half-apply.
"""

from __future__ import annotations

import math
import re
from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from server import tokens
from server.http.common import BodyTooLarge, StreamedBody, client_allowed
from server.service.scripts import ScriptRequestError, find_command
from server.store.base import StoreError, StoreUnavailable
from server.store.keys import NAMESPACE_RULE, is_namespace

if TYPE_CHECKING:
    from server.service.state import AppState

ACTOR_RE = re.compile(r"[^A-Za-z0-9_.@:+-]")
MAX_LIST_LIMIT = 1000


class HTTPFail(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


# Query parameters: every value is checked before use, and a bad one is a 400
# {"error": "bad_parameter", "message": ...}, never a 500 (issue 16: since=1e999 was one).
DIGITS_RE = re.compile(r"[0-9]{1,19}")
SCAN_CURSOR_RE = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")  # "pos", or "node-pos" on a cluster
AUDIT_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
MAX_SINCE_S = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_PREFIX_CHARS = 512


def bad_parameter(message: str) -> HTTPFail:
    return HTTPFail(400, "bad_parameter", message)


def bool_arg(value: str | None, default: bool, name: str = "value") -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise bad_parameter(f"{name} must be true or false, got {value[:20]!r}")


def int_arg(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    # Not int(): it takes " 5", "+5", "5_000" and other scripts' digits.
    if not DIGITS_RE.fullmatch(value):
        raise bad_parameter(f"{name} must be an integer between {low} and {high}")
    number = int(value)
    if not low <= number <= high:
        raise bad_parameter(f"{name} must be an integer between {low} and {high}")
    return number


def since_arg(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        since = float(value)
    except ValueError:
        raise bad_parameter("since must be a unix timestamp in seconds") from None
    # float() also takes "nan", "inf" and "1e999" (inf).
    if not math.isfinite(since) or not 0 <= since <= MAX_SINCE_S:
        raise bad_parameter(f"since must be a unix timestamp in seconds between 0 and {MAX_SINCE_S}")
    return since


def matching_arg(value: str | None, default: str, pattern: re.Pattern[str], name: str, what: str) -> str:
    if value is None or value == "":
        return default
    if not pattern.fullmatch(value):
        raise bad_parameter(f"{name} must be {what}")
    return value


class AdminHandler(StreamedBody):
    state: AppState
    admin = True  # False for /metrics when metrics_public
    # The query parameters each method takes; any other is refused (400 bad_parameter), so
    # a misspelt ?limt=5 is not silently ignored. None: not checked (a handler that does
    # not declare its parameters).
    query: dict[str, frozenset[str]] | None = None
    # What a scope limit applies to on this route: "command" (the path's first argument,
    # for deploy tokens limited to commands) or "namespace" (the query's, for kv-write).
    limited_by: str | None = None

    def initialize(self, state: AppState, scopes: dict[str, str] | None = None) -> None:
        self.state = state
        self.scopes = scopes or {}
        self.token: tokens.Token | None = None
        self.answered = False  # finish() was called: Tornado keeps its own flag private

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        self.answered = True
        return super().finish(chunk)

    def limit_for_request(self) -> int:
        cfg = self.state.config
        return cfg.max_body_bytes + cfg.max_script_bytes + 4096

    async def prepare(self) -> None:
        state = self.state
        if not client_allowed(self.request.remote_ip, state.admin_networks):
            self.json_error(403, "forbidden", "client address is not in admin_allow_cidrs")
            return
        if self.admin:
            try:
                self.token = await self._authenticate()
            except StoreUnavailable:
                self.json_error(503, "store_unavailable",
                                "the store (Redis) is unavailable: only the configured admin token works")
                return
            if self.token is None:
                self.json_error(
                    401,
                    "unauthorized",
                    "missing or wrong admin token (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": 'Bearer realm="scriptgate"'},
                )
                return
            # A method the route does not declare needs admin (and then answers 405).
            scope = self.scopes.get(self.request.method or "", tokens.ADMIN)
            command = namespace = None
            if self.limited_by == "command" and self.path_args:
                command = self.path_args[0]
            elif self.limited_by == "namespace":
                namespace = self.get_query_argument("namespace", "default")
            if not self.token.allows(scope, command=command, namespace=namespace):
                target = f" on {command}" if command else f" in namespace {namespace}" if namespace else ""
                self.json_error(403, "insufficient_scope",
                                f"token {self.token.name!r} lacks the {scope!r} scope{target[:100]}",
                                required=scope)
                return
        problem = self.query_problem()
        if problem:
            self.json_error(400, "bad_parameter", problem)
            return
        super().prepare()

    def query_problem(self) -> str | None:
        """Why the query string is refused (unknown or repeated parameter, not UTF-8), or None."""
        allowed = None if self.query is None else self.query.get(self.request.method or "", frozenset())
        for name, values in self.request.query_arguments.items():
            shown = name[:40]
            if allowed is not None and name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                return f"unknown query parameter {shown!r} (this endpoint takes: {known})"
            if len(values) > 1:
                return f"query parameter {shown!r} given more than once"
            try:
                values[0].decode("utf-8")
            except UnicodeDecodeError:
                return f"query parameter {shown!r} is not valid UTF-8"
        return None

    async def _authenticate(self) -> tokens.Token | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        if not given:
            return None
        found = tokens.match(given, self.state.token, {})
        if found is not None:  # the configured token needs no store round trip
            return found
        return tokens.match(given, "", await self.state.store.tokens_all())

    def actor(self) -> str:
        """Who acts, for the audit log: the token's name, then the client's own label
        (``X-ScriptGate-Actor``, e.g. ``ci-cli``) if it sent one, then its address."""
        name = self.token.name if self.token is not None else "anonymous"
        who = ACTOR_RE.sub("", self.request.headers.get("X-ScriptGate-Actor", ""))[:64]
        return f"{name}+{who}@{self.request.remote_ip}" if who else f"{name}@{self.request.remote_ip}"

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(data))

    def json_body(self) -> Any:
        raw = self.body
        if not raw.strip():
            raise HTTPFail(400, "bad_request", "request body must be a JSON value")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPFail(400, "invalid_json", f"request body is not valid JSON: {str(exc)[:200]}") from None

    def command(self, name: str) -> str:
        return find_command(self.state.catalog, name).name

    def namespace(self) -> str:
        ns = self.get_query_argument("namespace", "default")
        if not is_namespace(ns):
            raise bad_parameter(f"namespace must match {NAMESPACE_RULE}")
        return ns

    async def _call(self, method: Callable[..., Awaitable[None]], *args: str) -> None:
        try:
            await method(*args)
        except HTTPFail as fail:
            self.json_error(fail.status, fail.code, fail.message, **fail.extra)
        except ScriptRequestError as exc:
            self.json_error(exc.status, exc.code, exc.message, **exc.extra())
        except BodyTooLarge:
            self.too_large(self._limit)
        except StoreError as exc:
            self.json_error(exc.status, exc.code, exc.message)
        except StoreUnavailable:
            self.json_error(503, "store_unavailable", "the store (Redis) is unavailable; nothing was changed")


