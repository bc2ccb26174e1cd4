"""The admin API (``/admin/...``), ``/healthz`` and ``/metrics``.

All ``/admin`` endpoints and ``/metrics`` (unless ``metrics_public``) need
``Authorization: Bearer <token>``: the configured admin token or a scoped token
(server/tokens.py), compared in constant time. Each route declares, in the route table
(``routes``), the scope every method needs; a token without it gets 403. Errors are JSON
``{"error": code, "message": text}``; store outages are 503 and never half-apply.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import tornado.iostream
import tornado.web

from server import calllogs, tokens
from server.config import NAMESPACE_RE
from server.http.common import BodyTooLarge, JSONErrorMixin, StreamedBody, client_allowed
from server.memory import isolation_health
from server.samples import sample
from server.store.base import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from server.app import AppState

ACTOR_RE = re.compile(r"[^A-Za-z0-9_.@:+-]")
KV_TYPES = ("string", "set", "hash", "list")
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


def _bool_arg(value: str | None, default: bool, name: str = "value") -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise bad_parameter(f"{name} must be true or false, got {value[:20]!r}")


def _int_arg(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    # Not int(): it takes " 5", "+5", "5_000" and other scripts' digits.
    if not DIGITS_RE.fullmatch(value):
        raise bad_parameter(f"{name} must be an integer between {low} and {high}")
    number = int(value)
    if not low <= number <= high:
        raise bad_parameter(f"{name} must be an integer between {low} and {high}")
    return number


def _since_arg(value: str | None) -> float | None:
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


def _matching_arg(value: str | None, default: str, pattern: re.Pattern[str], name: str, what: str) -> str:
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
        if name not in self.state.catalog:
            raise HTTPFail(404, "unknown_command", f"unknown callbackCommand {name[:80]!r}")
        return name

    def namespace(self) -> str:
        ns = self.get_query_argument("namespace", "default")
        if not NAMESPACE_RE.match(ns):
            raise bad_parameter("namespace must match [A-Za-z0-9_-]{1,64}")
        return ns

    async def _call(self, method: Any, *args: Any) -> None:
        try:
            await method(*args)
        except HTTPFail as fail:
            self.json_error(fail.status, fail.code, fail.message, **fail.extra)
        except BodyTooLarge:
            self.too_large(self._limit)
        except StoreError as exc:
            self.json_error(exc.status, exc.code, exc.message)
        except StoreUnavailable:
            self.json_error(503, "store_unavailable", "the store (Redis) is unavailable; nothing was changed")


# --- scripts ---------------------------------------------------------------------------

class ScriptsHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        scripts = await self.state.store.list_scripts()
        self.send({"scripts": [m.to_json() for m in scripts]})


@tornado.web.stream_request_body
class ScriptHandler(AdminHandler):
    query = {"GET": frozenset(), "PUT": frozenset({"activate"}), "DELETE": frozenset()}
    limited_by = "command"

    def limit_for_request(self) -> int:
        if self.request.method == "PUT":
            return self.state.config.max_script_bytes
        return super().limit_for_request()

    def too_large(self, limit: int) -> None:
        self.json_error(413, "payload_too_large", f"script is larger than {limit} bytes (max_script_bytes)")

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def put(self, name: str) -> None:
        await self._call(self._put, name)

    async def delete(self, name: str) -> None:
        await self._call(self._delete, name)

    async def _get(self, name: str) -> None:
        command = self.command(name)
        meta = await self.state.store.get_meta(command)
        if meta is None or meta.active_version is None:
            raise HTTPFail(404, "no_script", f"no live script for {command}")
        version = await self.state.store.get_version(command, meta.active_version)
        if version is None:
            raise HTTPFail(404, "no_script", f"no live script for {command}")
        self.send({**meta.to_json(), **version.to_json(with_source=True), "active": True})

    async def _put(self, name: str) -> None:
        command = self.command(name)
        activate = _bool_arg(self.get_query_argument("activate", None), True, "activate")
        source = decode_source(self.body)
        # The sandbox policy first, then what the command's reply can carry (server/lint.py).
        issues = await self.state.pool.check(source)
        if issues:
            raise invalid_script(issues[0], [i.to_wire() for i in issues])
        errors = self.state.lint_errors(command, source)
        if errors:
            raise invalid_script(errors[0], [e.to_json() for e in errors])
        sha = hashlib.sha256(source.encode()).hexdigest()
        info, _before = await self.state.store.put_version(command, source, sha, activate, self.actor())
        warnings = self.state.lint(command, source)
        if info.unchanged:
            # The live version already has this source: no new version, and nothing to reload.
            self.send({"command": command, "version": info.version, "sha256": sha, "active": True,
                       "unchanged": True, "warnings": warnings})
            return
        synced = await self.state.refresh_scripts() if activate else True
        self.send(
            {"command": command, "version": info.version, "sha256": sha, "active": activate, "warnings": warnings,
             "synced": synced},
            201,
        )

    async def _delete(self, name: str) -> None:
        command = self.command(name)
        before = await self.state.store.deactivate(command, self.actor())
        synced = await self.state.refresh_scripts()
        self.send({"command": command, "active": False, "previous_version": before, "synced": synced})


def invalid_script(first: Any, details: list[dict[str, Any]]) -> HTTPFail:
    """422 for a refused upload: the first problem in the message, every one in details."""
    return HTTPFail(422, "invalid_script", f"line {first.line}, col {first.col}: {first.message}", details=details)


def decode_source(raw: bytes) -> str:
    if not raw.strip():
        raise HTTPFail(422, "invalid_script", "the script is empty", details=[])
    if b"\x00" in raw:
        raise HTTPFail(422, "invalid_script", "the script contains NUL bytes (binary upload?)", details=[])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise HTTPFail(
            422, "invalid_script", "the script is not UTF-8 text",
            details=[{"line": line, "col": 0, "message": "invalid UTF-8 byte sequence"}],
        ) from None
    return text.removeprefix("\ufeff")


class VersionsHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def _get(self, name: str) -> None:
        command = self.command(name)
        versions = await self.state.store.list_versions(command)
        meta = await self.state.store.get_meta(command)
        active = meta.active_version if meta else None
        self.send(
            {
                "command": command,
                "active_version": active,
                "versions": [{**v.to_json(), "active": v.version == active} for v in versions],
            }
        )


class VersionHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self, name: str, number: str) -> None:
        await self._call(self._get, name, number)

    async def _get(self, name: str, number: str) -> None:
        command = self.command(name)
        version = await self.state.store.get_version(command, _int_arg(number, 0, 1, 2**53, "version"))
        if version is None:
            raise HTTPFail(404, "no_version", f"{command} has no version {number}")
        meta = await self.state.store.get_meta(command)
        active = meta.active_version if meta else None
        self.send({**version.to_json(with_source=True), "active": version.version == active})


@tornado.web.stream_request_body
class ActivateHandler(AdminHandler):
    query = {"POST": frozenset()}
    limited_by = "command"

    async def post(self, name: str) -> None:
        await self._call(self._post, name)

    async def _post(self, name: str) -> None:
        command = self.command(name)
        body = self.json_body()
        version = body.get("version") if isinstance(body, dict) else None
        if type(version) is not int or version < 1:
            raise HTTPFail(400, "bad_request", 'body must be {"version": <positive integer>}')
        before, after = await self.state.store.activate(command, version, self.actor())
        synced = await self.state.refresh_scripts()
        self.send({"command": command, "active_version": after, "previous_version": before, "synced": synced})


@tornado.web.stream_request_body
class TestHandler(AdminHandler):
    query = {"POST": frozenset()}
    limited_by = "command"

    async def post(self, name: str) -> None:
        await self._call(self._post, name)

    async def _post(self, name: str) -> None:
        command = self.state.catalog.get(self.command(name))
        assert command is not None
        body = self.json_body()
        if not isinstance(body, dict):
            raise HTTPFail(400, "bad_request",
                           'body must be {"payload": {...} or "sample": true, "source"?: str, "version"?: int}')
        use_sample = body.get("sample", False)
        if type(use_sample) is not bool:
            raise HTTPFail(400, "bad_request", "sample must be true or false")
        if use_sample:
            if "payload" in body:
                raise HTTPFail(400, "bad_request", "give either payload or sample, not both")
            payload = sample(command.name)
        else:
            payload = body.get("payload")
            if type(payload) is not dict:
                raise HTTPFail(400, "bad_request",
                               'payload must be a JSON object (the callback request), or send "sample": true')
        problem = command.check_request(payload)
        if problem:
            raise HTTPFail(400, "invalid_field", problem)
        source, version = body.get("source"), body.get("version")
        if source is not None and version is not None:
            raise HTTPFail(400, "bad_request", "give either source or version, not both")
        if source is not None:
            if type(source) is not str or not source.strip():
                raise HTTPFail(400, "bad_request", "source must be a non-empty string")
            if len(source.encode("utf-8", "surrogatepass")) > self.state.config.max_script_bytes:
                raise HTTPFail(413, "payload_too_large", "source is larger than max_script_bytes")
        elif version is not None:
            if type(version) is not int or version < 1:
                raise HTTPFail(400, "bad_request", "version must be a positive integer")
            info = await self.state.store.get_version(command.name, version)
            if info is None:
                raise HTTPFail(404, "no_version", f"{command.name} has no version {version}")
            source = info.source
        else:
            active = self.state.table.get(command.name)
            if active is None:
                raise HTTPFail(404, "no_script", f"no live script for {command.name}; send source or version")
            source = active.source
        assert source is not None
        self.send(await self.state.tester.run(command, payload, source))


# --- KV --------------------------------------------------------------------------------

class KVListHandler(AdminHandler):
    query = {"GET": frozenset({"namespace", "prefix", "limit", "cursor"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        ns = self.namespace()
        prefix = self.get_query_argument("prefix", "")
        if len(prefix) > MAX_PREFIX_CHARS:
            raise bad_parameter(f"prefix must be at most {MAX_PREFIX_CHARS} characters")
        limit = _int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        cursor = _matching_arg(self.get_query_argument("cursor", None), "0", SCAN_CURSOR_RE, "cursor",
                               "the cursor returned by the previous page")
        keys, next_cursor = await self.state.store.kv_scan(ns, prefix, limit, cursor)
        self.send({"namespace": ns, "keys": keys, "cursor": next_cursor})


def _kv_key(raw: str) -> str:
    from sandbox.api import KVRefused as KVError
    from sandbox.kvops import check_key

    # Tornado has already percent-decoded the path argument; decoding again would turn
    # "pct%2541" into "pctA" and make keys containing "%XX" unreachable.
    try:
        return check_key(raw, 512)
    except KVError as exc:
        raise HTTPFail(400, "invalid_key", str(exc)) from None


@tornado.web.stream_request_body
class KVKeyHandler(AdminHandler):
    query = {m: frozenset({"namespace"}) for m in ("GET", "PUT", "DELETE")}
    limited_by = "namespace"

    async def get(self, raw: str) -> None:
        await self._call(self._get, raw)

    async def put(self, raw: str) -> None:
        await self._call(self._put, raw)

    async def delete(self, raw: str) -> None:
        await self._call(self._delete, raw)

    async def _get(self, raw: str) -> None:
        ns, key = self.namespace(), _kv_key(raw)
        item = await self.state.store.kv_read(ns, key)
        if item is None:
            raise HTTPFail(404, "no_key", f"no key {key[:80]!r} in namespace {ns}")
        self.send({"namespace": ns, **item})

    async def _put(self, raw: str) -> None:
        ns, key = self.namespace(), _kv_key(raw)
        body = self.json_body()
        if not isinstance(body, dict) or "value" not in body:
            raise HTTPFail(400, "bad_request", 'body must be {"value": ..., "type"?: "string|set|hash|list", "ttl"?: seconds}')
        value = body["value"]
        kind = body.get("type") or {str: "string", dict: "hash", list: "list"}.get(type(value))
        if kind not in KV_TYPES:
            raise HTTPFail(400, "bad_request", f"type must be one of {', '.join(KV_TYPES)}")
        problem = _check_kv_value(kind, value)
        if problem:
            raise HTTPFail(400, "bad_request", problem)
        ttl = body.get("ttl")
        if ttl is not None and (type(ttl) is not int or ttl < 1):
            raise HTTPFail(400, "bad_request", "ttl must be a positive integer (seconds) or null")
        await self.state.store.kv_write(ns, key, kind, value, ttl, self.actor())
        self.send({"namespace": ns, "key": key, "type": kind, "ttl": ttl}, 200)

    async def _delete(self, raw: str) -> None:
        ns, key = self.namespace(), _kv_key(raw)
        existed = await self.state.store.kv_delete(ns, key, self.actor())
        if not existed:
            raise HTTPFail(404, "no_key", f"no key {key[:80]!r} in namespace {ns}")
        self.send({"namespace": ns, "key": key, "deleted": True})


def _check_kv_value(kind: str, value: Any) -> str | None:
    limit = 65_536
    if kind == "string":
        if type(value) is not str:
            return "a string value must be a JSON string"
        return "value too large" if len(value.encode()) > limit else None
    if kind in ("set", "list"):
        if type(value) is not list or not all(type(v) is str for v in value):
            return f"a {kind} value must be a list of strings"
        if not value:
            return f"a {kind} value must not be empty (DELETE the key instead)"
        return "too many items (max 100000)" if len(value) > 100_000 else None
    if type(value) is not dict or not all(type(v) is str for v in value.values()):
        return "a hash value must be an object of strings"
    if not value:
        return "a hash value must not be empty (DELETE the key instead)"
    return None


@tornado.web.stream_request_body
class KVMembersHandler(AdminHandler):
    query = {"POST": frozenset({"namespace"})}
    limited_by = "namespace"

    async def post(self, raw: str) -> None:
        await self._call(self._post, raw)

    async def _post(self, raw: str) -> None:
        ns, key = self.namespace(), _kv_key(raw)
        body = self.json_body()
        if not isinstance(body, dict) or not set(body) <= {"add", "remove"} or not body:
            raise HTTPFail(400, "bad_request", 'body must be {"add": [...], "remove": [...]}')
        add, remove = body.get("add") or [], body.get("remove") or []
        for name, items in (("add", add), ("remove", remove)):
            if type(items) is not list or not all(type(v) is str and v for v in items):
                raise HTTPFail(400, "bad_request", f"{name} must be a list of non-empty strings")
            if len(items) > 100_000:
                raise HTTPFail(400, "bad_request", f"{name}: at most 100000 members per request")
        result = await self.state.store.kv_members(ns, key, add, remove, self.actor())
        self.send({"namespace": ns, "key": key, **result})


# --- recordings, audit, health, metrics --------------------------------------------------

RECORDINGS_PAGE = 1000


class RecordingsHandler(AdminHandler):
    query = {"GET": frozenset({"since", "limit", "operationID"})}

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def _get(self, name: str) -> None:
        command = self.command(name)
        limit = _int_arg(self.get_query_argument("limit", None), 1000, 1, 100_000, "limit")
        # Read-your-writes: every callback answered before this request is in the store.
        await self.state.recordings_settled()
        since = _since_arg(self.get_query_argument("since", None))
        operation_id = self.get_query_argument("operationID", None)
        if operation_id is not None:
            await self._get_operation(command, operation_id, limit, since)
            return
        # A page at a time (RECORDINGS_PAGE records), flushed as it goes: an export of 100,000
        # records holds one page in memory and callbacks are served between pages.
        store = self.state.store
        start: str | None = await store.recordings_start(command, limit, since, RECORDINGS_PAGE)
        self.set_header("Content-Type", "application/x-ndjson")
        sent, flushed = 0, False
        try:
            while start is not None and sent < limit:
                records, start = await store.recordings_page(command, start, min(RECORDINGS_PAGE, limit - sent))
                sent += len(records)
                if records:
                    self.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
                    if start is not None and sent < limit:
                        await self.flush()
                        flushed = True
        except (StoreError, StoreUnavailable):
            if not flushed:
                raise  # nothing sent yet: the usual JSON error
            # The status is out already: cut the response off (no final chunk) so the client
            # sees an incomplete body, never one that looks complete.
            self.request.connection.close()
            return
        self.finish()


    async def _get_operation(self, command: str, operation_id: str, limit: int, since: float | None) -> None:
        """The last ``limit`` records of one operationID (from ``since``): the stream is read
        a page at a time, keeping only the matches."""
        store = self.state.store
        start: str | None = await store.recordings_start(command, 1, since, RECORDINGS_PAGE) if since else "-"
        kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        while start is not None:
            records, start = await store.recordings_page(command, start, RECORDINGS_PAGE)
            kept.extend(r for r in records if r.get("operationID") == operation_id)
            await asyncio.sleep(0)  # callbacks are served between pages
        self.set_header("Content-Type", "application/x-ndjson")
        self.finish(b"".join(orjson.dumps(r) + b"\n" for r in kept))


class AuditHandler(AdminHandler):
    query = {"GET": frozenset({"limit", "before"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        limit = _int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        before = _matching_arg(self.get_query_argument("before", None), "", AUDIT_ID_RE, "before",
                               "an audit entry id like 1700000000000-0") or None
        entries = await self.state.store.audit(limit, before)
        self.send({"entries": [e.to_json() for e in entries]})


# --- per-callback logs (server/calllogs.py) ---------------------------------------------

MAX_LOGS_LIMIT = 10_000


def _log_filter(handler: AdminHandler, *, errors_flag: bool) -> calllogs.Filter:
    command = handler.get_query_argument("command", None) or None
    if command is not None and command not in handler.state.catalog:
        raise bad_parameter(f"unknown callbackCommand {command[:80]!r}")
    operation_id = handler.get_query_argument("operationID", None) or None
    if operation_id is not None and len(operation_id) > 128:
        raise bad_parameter("operationID is longer than 128 characters")
    if errors_flag:
        level = "error" if _bool_arg(handler.get_query_argument("errors", None), False, "errors") else None
    else:
        level = handler.get_query_argument("level", None) or None
        if level is not None and level not in calllogs.LEVELS:
            raise bad_parameter(f"level must be one of {', '.join(calllogs.LEVELS)}")
    return calllogs.Filter(command, operation_id, level)


class LogsHandler(AdminHandler):
    query = {"GET": frozenset({"command", "operationID", "level", "since", "limit"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        flt = _log_filter(self, errors_flag=False)
        limit = _int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LOGS_LIMIT, "limit")
        since_arg = self.get_query_argument("since", None)
        since_ms = 0
        if since_arg:
            try:
                since_ms = calllogs.parse_since(since_arg)
            except ValueError as exc:
                raise HTTPFail(400, "bad_parameter", str(exc)) from None
        records = await calllogs.search(self.state.store, flt, since_ms, limit)
        self.set_header("Content-Type", "application/x-ndjson")
        self.finish(b"".join(r + b"\n" for r in records))


class LogsStreamHandler(AdminHandler):
    """Server-sent events: ``data: <record JSON>`` per callback, a ``: keep-alive`` comment
    when idle. Records come from every process and instance (pub/sub on the store)."""

    query = {"GET": frozenset({"command", "operationID", "errors"})}

    def on_connection_close(self) -> None:
        self._closed.set()

    async def get(self) -> None:
        self._closed = asyncio.Event()
        await self._call(self._get)

    async def _get(self) -> None:
        flt = _log_filter(self, errors_flag=True)
        hub = self.state.live_logs()
        keepalive = self.state.config.logs.keepalive_s
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold events back
        async with hub.reader() as queue:
            try:
                await asyncio.wait_for(hub.subscribed.wait(), 5.0)
            except TimeoutError:
                raise StoreUnavailable("live log subscription") from None
            try:
                self.write(b": connected\n\n")
                await self.flush()
                closed = asyncio.ensure_future(self._closed.wait())
                try:
                    while not self._closed.is_set():
                        getter = asyncio.ensure_future(queue.get())
                        done, _ = await asyncio.wait({getter, closed}, timeout=keepalive,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if getter not in done:
                            getter.cancel()
                            if not self._closed.is_set():
                                self.write(b": keep-alive\n\n")
                                await self.flush()
                            continue
                        data = getter.result()
                        try:
                            record = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            continue
                        if flt.keeps(record):
                            self.write(b"data: " + data + b"\n\n")
                            await self.flush()
                finally:
                    closed.cancel()
            except tornado.iostream.StreamClosedError:
                return
        if not self._finished and not self._closed.is_set():
            self.finish()


# --- tokens (server/tokens.py) ------------------------------------------------------------

@tornado.web.stream_request_body
class TokensHandler(AdminHandler):
    query = {"GET": frozenset(), "POST": frozenset()}

    async def get(self) -> None:
        await self._call(self._get)

    async def post(self) -> None:
        await self._call(self._post)

    async def _get(self) -> None:
        stored = await self.state.store.tokens_all()
        found = [t for t in (tokens.Token.load(i, raw) for i, raw in stored.items()) if t is not None]
        found.sort(key=lambda t: (t.created_at, t.name))
        self.send({"tokens": [t.to_json() for t in found]})

    async def _post(self) -> None:
        try:
            token, secret = tokens.new_token(self.json_body(), self.state.catalog.commands, NAMESPACE_RE)
        except tokens.TokenRequestError as exc:
            raise HTTPFail(400, "bad_request", str(exc)) from None
        if len(await self.state.store.tokens_all()) >= tokens.MAX_TOKENS:
            raise HTTPFail(409, "too_many_tokens", f"at most {tokens.MAX_TOKENS} tokens; revoke some first")
        detail = {"id": token.id, "scopes": list(token.scopes), "commands": list(token.commands),
                  "namespaces": list(token.namespaces)}
        await self.state.store.token_create(token.id, token.name, token.stored(), self.actor(), detail)
        self.send({**token.to_json(), "token": secret}, 201)


class TokenHandler(AdminHandler):
    query = {"DELETE": frozenset()}

    async def delete(self, token_id: str) -> None:
        await self._call(self._delete, token_id)

    async def _delete(self, token_id: str) -> None:
        if not tokens.ID_RE.fullmatch(token_id):
            raise HTTPFail(404, "no_token", "no such token")
        raw = (await self.state.store.tokens_all()).get(token_id)
        token = tokens.Token.load(token_id, raw) if raw is not None else None
        if token is None or not await self.state.store.token_delete(token_id, token.name, self.actor()):
            raise HTTPFail(404, "no_token", "no such token")
        self.send({"id": token_id, "name": token.name, "revoked": True})


# /healthz tells the store's state as of at most HEALTH_FRESH_S ago: a store call answered
# within it counts, otherwise a ping bounded by HEALTH_PING_S is made. Together at most
# ~100 ms between the store stopping to answer and /healthz saying so.
HEALTH_FRESH_S = 0.05
HEALTH_PING_S = 0.05


async def store_answers(store: Any) -> bool:
    """Does the store answer now? A paused Redis keeps its connections open, so the last
    call's outcome alone would say "ok" for seconds."""
    last_ok = store.health.last_ok
    if store.healthy and last_ok is not None and time.time() - last_ok < HEALTH_FRESH_S:
        return True
    try:
        async with asyncio.timeout(HEALTH_PING_S):
            return bool(await store.ping())
    except TimeoutError:
        return False


class HealthHandler(JSONErrorMixin):
    def initialize(self, state: AppState) -> None:
        self.state = state

    async def get(self) -> None:
        state = self.state
        store_ok = await store_answers(state.store)
        reasons = [] if store_ok else [f"store unavailable: {state.store.health.last_reason or 'no answer'}"]
        if not state.table.loaded:
            reasons.append("live scripts not loaded yet")
        if (lost := state.table.problem()) is not None:
            reasons.append(lost)
        if state.draining:
            reasons.append("draining: shutting down")
        status = "degraded" if reasons else "ok"
        body = {
            "status": status,
            "reasons": reasons,
            "registry": state.table.describe(),
            "store": state.store.describe(),
            "scripts_loaded": state.table.loaded,
            "live_scripts": len(state.table.snapshot()),
            "sandbox": state.pool.stats(),
            **isolation_health(state),
            "uptime_s": round(time.time() - state.started_at, 1),
        }
        try:
            strict = _bool_arg(self.get_query_argument("strict", None), False, "strict")
        except HTTPFail as fail:
            self.json_error(fail.status, fail.code, fail.message)
            return
        self.set_status(503 if strict and status != "ok" else 200)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))


class MetricsHandler(AdminHandler):
    async def prepare(self) -> None:
        self.admin = not self.state.config.metrics_public
        await super().prepare()

    def get(self) -> None:
        self.state.metrics.store_up.set(1 if self.state.store.healthy else 0)
        self.state.metrics.refresh(self.state)
        self.set_header("Content-Type", self.state.metrics.content_type)
        self.finish(self.state.metrics.render())


OPENAPI_PATH = Path(__file__).resolve().parent.parent / "data" / "openapi.json"


@functools.cache
def openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()


class OpenAPIHandler(AdminHandler):
    # The description of the API is no secret (it ships with the code) and tools that render
    # it rarely send a token; admin_allow_cidrs still applies, as to every admin route.
    admin = False
    query = {"GET": frozenset()}

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(openapi_document())


R, D, K, A = tokens.READ, tokens.DEPLOY, tokens.KV_WRITE, tokens.ADMIN


def routes(state: AppState) -> list[tuple[str, type, dict[str, Any]]]:
    """The admin route table: pattern, handler, and the scope each method needs (the one
    definition of who may do what; tests/test_admin_auth.py checks every route x scope)."""
    cmd = r"([^/]+)"
    table: list[tuple[str, type, dict[str, str] | None]] = [
        (r"/healthz", HealthHandler, None),
        (r"/metrics", MetricsHandler, {"GET": R}),
        (r"/admin/scripts/?", ScriptsHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/versions/?", VersionsHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/versions/([^/]+)", VersionHandler, {"GET": R}),
        (rf"/admin/scripts/{cmd}/activate", ActivateHandler, {"POST": D}),
        (rf"/admin/scripts/{cmd}/test", TestHandler, {"POST": D}),
        (rf"/admin/scripts/{cmd}", ScriptHandler, {"GET": R, "PUT": D, "DELETE": D}),
        (r"/admin/kv/?", KVListHandler, {"GET": R}),
        (r"/admin/kv/(.+)/members", KVMembersHandler, {"POST": K}),
        (r"/admin/kv/(.+)", KVKeyHandler, {"GET": R, "PUT": K, "DELETE": K}),
        (rf"/admin/recordings/{cmd}", RecordingsHandler, {"GET": R}),
        (r"/admin/audit/?", AuditHandler, {"GET": R}),
        (r"/admin/logs/stream", LogsStreamHandler, {"GET": R}),
        (r"/admin/logs/?", LogsHandler, {"GET": R}),
        (r"/admin/tokens/?", TokensHandler, {"GET": A, "POST": A}),
        (r"/admin/tokens/([^/]+)", TokenHandler, {"DELETE": A}),
        (r"/admin/openapi\.json", OpenAPIHandler, None),
    ]
    return [(p, h, {"state": state} if scopes is None else {"state": state, "scopes": scopes})
            for p, h, scopes in table]
