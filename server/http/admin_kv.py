"""Admin endpoints for the scripts' KV data (``/admin/kv/...``)."""

from __future__ import annotations

from typing import Any

import tornado.web

from server.http.admin_base import (
    MAX_LIST_LIMIT,
    MAX_PREFIX_CHARS,
    SCAN_CURSOR_RE,
    AdminHandler,
    HTTPFail,
    bad_parameter,
    int_arg,
    matching_arg,
)

KV_TYPES = ("string", "set", "hash", "list")


class KVListHandler(AdminHandler):
    query = {"GET": frozenset({"namespace", "prefix", "limit", "cursor"})}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        ns = self.namespace()
        prefix = self.get_query_argument("prefix", "")
        if len(prefix) > MAX_PREFIX_CHARS:
            raise bad_parameter(f"prefix must be at most {MAX_PREFIX_CHARS} characters")
        limit = int_arg(self.get_query_argument("limit", None), 100, 1, MAX_LIST_LIMIT, "limit")
        cursor = matching_arg(self.get_query_argument("cursor", None), "0", SCAN_CURSOR_RE, "cursor",
                               "the cursor returned by the previous page")
        keys, next_cursor = await self.state.store.kv_scan(ns, prefix, limit, cursor)
        self.send({"namespace": ns, "keys": keys, "cursor": next_cursor})


def _kv_key(raw: str) -> str:
    from sandbox.api import KVRefused
    from sandbox.kvops import check_key

    # Tornado has already percent-decoded the path argument; decoding again would turn
    # "pct%2541" into "pctA" and make keys containing "%XX" unreachable.
    try:
        return check_key(raw, 512)
    except KVRefused as exc:
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


