"""The admin API (``/admin/...``), ``/healthz`` and ``/metrics``.

All ``/admin`` endpoints and ``/metrics`` (unless ``metrics_public``) need
``Authorization: Bearer <token>``, compared in constant time. Errors are JSON
``{"error": code, "message": text}``; store outages are 503 and never half-apply.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from server.config import NAMESPACE_RE
from server.http_common import BodyTooLarge, JSONErrorMixin, StreamedBody, client_allowed
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


def _bool_arg(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise HTTPFail(400, "bad_request", f"expected true or false, got {value[:20]!r}")


def _int_arg(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPFail(400, "bad_request", f"{name} must be an integer") from None
    if not low <= number <= high:
        raise HTTPFail(400, "bad_request", f"{name} must be between {low} and {high}")
    return number


class AdminHandler(StreamedBody):
    state: AppState
    admin = True  # False for /metrics when metrics_public

    def initialize(self, state: AppState) -> None:
        self.state = state

    def limit_for_request(self) -> int:
        cfg = self.state.config
        return cfg.max_body_bytes + cfg.max_script_bytes + 4096

    def prepare(self) -> None:
        state = self.state
        if not client_allowed(self.request.remote_ip, state.admin_networks):
            self.json_error(403, "forbidden", "client address is not in admin_allow_cidrs")
            return
        if self.admin and not self._authorized():
            self.json_error(
                401,
                "unauthorized",
                "missing or wrong admin token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="scriptgate"'},
            )
            return
        super().prepare()

    def _authorized(self) -> bool:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.state.token.encode()
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # compare_digest on equal-length inputs is constant time; hash both so the
        # comparison also hides the expected length.
        return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()) and bool(given)

    def actor(self) -> str:
        who = self.request.headers.get("X-ScriptGate-Actor", "")
        who = ACTOR_RE.sub("", who)[:64] or "admin"
        return f"{who}@{self.request.remote_ip}"

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
            raise HTTPFail(400, "bad_request", "namespace must match [A-Za-z0-9_-]{1,64}")
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
    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        scripts = await self.state.store.list_scripts()
        self.send({"scripts": [m.to_json() for m in scripts]})


@tornado.web.stream_request_body
class ScriptHandler(AdminHandler):
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
        activate = _bool_arg(self.get_query_argument("activate", None), True)
        source = decode_source(self.body)
        issues = await self.state.pool.check(source)
        if issues:
            first = issues[0]
            raise HTTPFail(
                422,
                "invalid_script",
                f"line {first.line}, col {first.col}: {first.message}",
                details=[i.to_wire() for i in issues],
            )
        errors = self.state.lint_errors(command, source)
        if errors:
            first = errors[0]
            raise HTTPFail(
                422,
                "invalid_script",
                f"line {first.line}, col {first.col}: {first.message}",
                details=[e.to_json() for e in errors],
            )
        sha = hashlib.sha256(source.encode()).hexdigest()
        info, _before = await self.state.store.put_version(command, source, sha, activate, self.actor())
        warnings = self.state.lint(command, source)
        if info.unchanged:
            # The live version already has this source: no new version, and nothing to reload.
            self.send({"command": command, "version": info.version, "sha256": sha, "active": True,
                       "unchanged": True, "warnings": warnings})
            return
        if activate:
            await self.state.refresh_scripts()
        self.send(
            {"command": command, "version": info.version, "sha256": sha, "active": activate, "warnings": warnings},
            201,
        )

    async def _delete(self, name: str) -> None:
        command = self.command(name)
        before = await self.state.store.deactivate(command, self.actor())
        await self.state.refresh_scripts()
        self.send({"command": command, "active": False, "previous_version": before})


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
    async def post(self, name: str) -> None:
        await self._call(self._post, name)

    async def _post(self, name: str) -> None:
        command = self.command(name)
        body = self.json_body()
        version = body.get("version") if isinstance(body, dict) else None
        if type(version) is not int or version < 1:
            raise HTTPFail(400, "bad_request", 'body must be {"version": <positive integer>}')
        before, after = await self.state.store.activate(command, version, self.actor())
        await self.state.refresh_scripts()
        self.send({"command": command, "active_version": after, "previous_version": before})


@tornado.web.stream_request_body
class TestHandler(AdminHandler):
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
    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        ns = self.namespace()
        prefix = self.get_query_argument("prefix", "")
        limit = _int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        cursor = self.get_query_argument("cursor", "0") or "0"
        keys, next_cursor = await self.state.store.kv_scan(ns, prefix, limit, cursor)
        self.send({"namespace": ns, "keys": keys, "cursor": next_cursor})


def _kv_key(raw: str) -> str:
    from sandbox.api import KVError
    from sandbox.kvops import check_key

    # Tornado has already percent-decoded the path argument; decoding again would turn
    # "pct%2541" into "pctA" and make keys containing "%XX" unreachable.
    try:
        return check_key(raw, 512)
    except KVError as exc:
        raise HTTPFail(400, "invalid_key", str(exc)) from None


@tornado.web.stream_request_body
class KVKeyHandler(AdminHandler):
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
    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def _get(self, name: str) -> None:
        command = self.command(name)
        limit = _int_arg(self.get_query_argument("limit", None), 1000, 1, 100_000, "limit")
        since_arg = self.get_query_argument("since", None)
        since = None
        if since_arg:
            try:
                since = float(since_arg)
            except ValueError:
                raise HTTPFail(400, "bad_request", "since must be a unix timestamp in seconds") from None
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


class AuditHandler(AdminHandler):
    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        limit = _int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        before = self.get_query_argument("before", None)
        entries = await self.state.store.audit(limit, before)
        self.send({"entries": [e.to_json() for e in entries]})


class HealthHandler(JSONErrorMixin):
    def initialize(self, state: AppState) -> None:
        self.state = state

    async def get(self) -> None:
        state = self.state
        store_ok = state.store.healthy
        status = "ok" if store_ok and state.table.loaded else "degraded"
        body = {
            "status": status,
            "store": state.store.describe(),
            "scripts_loaded": state.table.loaded,
            "live_scripts": len(state.table.snapshot()),
            "sandbox": state.pool.stats(),
            **isolation_health(state),
            "uptime_s": round(time.time() - state.started_at, 1),
        }
        strict = self.get_query_argument("strict", "0") in ("1", "true")
        self.set_status(503 if strict and status != "ok" else 200)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))


class MetricsHandler(AdminHandler):
    def prepare(self) -> None:
        self.admin = not self.state.config.metrics_public
        super().prepare()

    def get(self) -> None:
        self.state.metrics.store_up.set(1 if self.state.store.healthy else 0)
        self.state.metrics.refresh(self.state)
        self.set_header("Content-Type", self.state.metrics.content_type)
        self.finish(self.state.metrics.render())


OPENAPI_PATH = Path(__file__).with_name("data") / "openapi.json"


@functools.cache
def openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()


class OpenAPIHandler(AdminHandler):
    # The description of the API is no secret (it ships with the code) and tools that render
    # it rarely send a token; admin_allow_cidrs still applies, as to every admin route.
    admin = False

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-cache")
        self.finish(openapi_document())


def routes(state: AppState) -> list[tuple[str, type, dict[str, Any]]]:
    kw = {"state": state}
    cmd = r"([^/]+)"
    return [
        (r"/healthz", HealthHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/admin/scripts/?", ScriptsHandler, kw),
        (rf"/admin/scripts/{cmd}/versions/?", VersionsHandler, kw),
        (rf"/admin/scripts/{cmd}/versions/([^/]+)", VersionHandler, kw),
        (rf"/admin/scripts/{cmd}/activate", ActivateHandler, kw),
        (rf"/admin/scripts/{cmd}/test", TestHandler, kw),
        (rf"/admin/scripts/{cmd}", ScriptHandler, kw),
        (r"/admin/kv/?", KVListHandler, kw),
        (r"/admin/kv/(.+)/members", KVMembersHandler, kw),
        (r"/admin/kv/(.+)", KVKeyHandler, kw),
        (rf"/admin/recordings/{cmd}", RecordingsHandler, kw),
        (r"/admin/audit/?", AuditHandler, kw),
        (r"/admin/openapi\.json", OpenAPIHandler, kw),
    ]
