"""Authentication on every admin route, generated from the route table.

For every route of ``server.http_admin.routes`` and every HTTP method its handler serves,
the same request is sent with no token and with several wrong ones (each must be 401 and
leave the store byte for byte unchanged) and then with the right token (which must
succeed and, for a write method, change the store: this proves the refused requests were
ones that would have written). A route or method added later is covered without editing
this file; one whose request cannot be guessed fails the control and asks for an example
below. ``test_every_application_route_is_covered`` checks that nothing reaches the
application outside this table except the routes that are public on purpose.

Served in process with the production assembly (``make_app`` behind ``FastCallbacks``),
a private embedded store and a stand-in sandbox pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web

from sandbox.api import ALLOW, RunResult
from server.app import build_state, make_app
from server.config import Config
from server.http_admin import routes as admin_routes
from server.http_fast import FastCallbacks
from server.store.connect import open_store

TOKEN = "the-right-admin-token-" + "z" * 16
INVITE = "callbackBeforeInviteJoinGroupCommand"
KEY = "auth:blocklist"
SOURCE_V1 = "def handle(req):\n    return deny(5001, 'v1')\n"
SOURCE_V2 = "def handle(req):\n    return deny(5002, 'v2')\n"
PAYLOAD = {"callbackCommand": INVITE, "groupID": "g1", "invitedUserIDs": ["u1"], "reason": "", "operationID": "o"}

# Routes anyone may call, each with the reason. Everything else needs the token.
PUBLIC = {
    r"/healthz": "load balancers and orchestrators probe it without credentials; it reads nothing secret",
    r"/admin/openapi\.json": "the API description ships with the code; API tools fetch it without a token "
                             "(admin_allow_cidrs still applies)",
    r"/admin(/.*)?": "answers 404 to every method and touches nothing",
    r"/(.*)": "OpenIM's callbacks; guarded by allow_cidrs and the secret path_prefix instead",
}

# Path parameters by the handler method's argument name; with these the right-token
# control request succeeds against the store prepared by ``prepare_store``.
PATH_VALUES = {"name": INVITE, "number": "1", "raw": KEY}
# Request bodies by (handler class, method) for the control to succeed.
BODIES: dict[tuple[str, str], Any] = {
    ("ScriptHandler", "PUT"): "def handle(req):\n    return deny(5003, 'v3')\n",
    ("ActivateHandler", "POST"): {"version": 1},
    ("TestHandler", "POST"): {"payload": PAYLOAD, "source": "def handle(req):\n    return None\n"},
    ("KVKeyHandler", "PUT"): {"value": ["a", "b", "c"], "type": "set"},
    ("KVMembersHandler", "POST"): {"add": ["b"]},
}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
# Write-method routes that never write, with the reason.
READ_ONLY = {("TestHandler", "POST"): "a dry run against a scratch store"}

# Wrong credentials, by name: each must be refused like no credentials at all.
BAD_AUTH: dict[str, dict[str, str]] = {
    "no-header": {},
    "wrong-token": {"Authorization": "Bearer wrong-token"},
    "empty-bearer": {"Authorization": "Bearer "},
    "right-token-wrong-scheme": {"Authorization": f"Basic {TOKEN}"},
    "right-token-no-scheme": {"Authorization": TOKEN},
    "right-token-prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "right-token-plus-one": {"Authorization": f"Bearer {TOKEN}x"},
}


def served_methods(handler: type) -> list[str]:
    """The HTTP methods ``handler`` implements (RequestHandler's defaults answer 405)."""
    base = tornado.web.RequestHandler
    return [m for m in handler.SUPPORTED_METHODS if getattr(handler, m.lower()) is not getattr(base, m.lower())]


@dataclass(frozen=True)
class Case:
    pattern: str
    handler: type
    method: str

    @property
    def id(self) -> str:
        return f"{self.method} {self.pattern}"

    def path(self) -> str:
        """A concrete path for the pattern, groups filled by the method's argument names."""
        params = [p for p in inspect.signature(getattr(self.handler, self.method.lower())).parameters if p != "self"]
        values = iter(PATH_VALUES.get(p, "x") for p in params)
        path = re.sub(r"\((?:[^()\\]|\\.)*\)", lambda _: next(values, "x"), self.pattern)
        return path.replace("/?", "").removesuffix("$")

    def body(self) -> bytes | None:
        example = BODIES.get((self.handler.__name__, self.method))
        if example is None:
            return b"{}" if self.method in ("PUT", "POST", "PATCH") else None
        return example.encode() if isinstance(example, str) else orjson.dumps(example)


def admin_cases() -> list[Case]:
    table = admin_routes(None)  # type: ignore[arg-type]  # only the handlers' kwargs need the state
    return [Case(p, h, m) for p, h, _ in table if p not in PUBLIC for m in served_methods(h)]


CASES = admin_cases()


class StubPool:
    """The sandbox stand-in: every script compiles and allows."""

    async def check(self, source: str, timeout: float = 2.0) -> list[Any]:
        return []

    async def run(self, **_: Any) -> RunResult:
        return RunResult(ALLOW)

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        pass


async def snapshot(store: Any) -> dict[str, Any]:
    """Every key of the store with its type, value and TTL (the whole embedded server)."""
    client = store.client
    out: dict[str, Any] = {}
    for key in sorted(await client.keys("*")):
        kind = await client.type(key)
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = sorted((await client.hgetall(key)).items())
        elif kind == "set":
            value = sorted(await client.smembers(key))
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "stream":
            value = await client.xrange(key)
        else:
            value = f"<{kind}>"
        out[key] = (kind, value, await client.ttl(key))
    return out


async def prepare_store(store: Any) -> None:
    """What the control requests act on: two versions (v2 live) and a set in the KV."""
    for source in (SOURCE_V1, SOURCE_V2):
        await store.put_version(INVITE, source, hashlib.sha256(source.encode()).hexdigest(), True, "setup")
    await store.kv_write("default", KEY, "set", ["a"], None, "setup")


@dataclass
class Served:
    base: str
    state: Any
    app: tornado.web.Application
    client: tornado.httpclient.AsyncHTTPClient

    async def send(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tornado.httpclient.HTTPResponse:
        return await self.client.fetch(
            self.base + path, method=method, body=body, headers=headers or {}, raise_error=False,
            allow_nonstandard_methods=True, request_timeout=30,
        )

    def right(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


def serve(test: Callable[[Served], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        store = await open_store(None, prefix="auth", isolated=True)
        await prepare_store(store)
        state = await build_state(Config(**config), TOKEN, store=store, pool=StubPool())
        await state.table.refresh()
        app = make_app(state)
        http = tornado.httpserver.HTTPServer(FastCallbacks(app, state))
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        http.add_sockets(sockets)
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            await test(Served(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", state, app, client))
        finally:
            client.close()
            http.stop()
            await http.close_all_connections()
            await store.close()

    asyncio.run(main())


def test_the_route_table_is_enumerated() -> None:
    """Guards the generator itself: the table has the write routes the API documents."""
    ids = {c.id for c in CASES}
    assert {"PUT /admin/scripts/([^/]+)", "DELETE /admin/scripts/([^/]+)", "POST /admin/scripts/([^/]+)/activate",
            "PUT /admin/kv/(.+)", "DELETE /admin/kv/(.+)", "POST /admin/kv/(.+)/members",
            "GET /metrics"} <= ids, ids
    assert len(CASES) >= 16


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_admin_route_and_method_needs_the_token(case: Case) -> None:
    async def scenario(srv: Served) -> None:
        path, body = case.path(), case.body()
        routed = next(r for r in srv.app.wildcard_router.rules if r.matcher.regex.match(path))
        assert routed.target is case.handler, f"{path} is routed to {routed.target.__name__}; fix Case.path"
        before = await snapshot(srv.state.store)
        assert before, "the prepared store is empty"
        for name, headers in BAD_AUTH.items():
            r = await srv.send(case.method, path, body, headers)
            assert r.code == 401, f"{case.id} with {name}: {r.code} {r.body[:200]!r}"
            if case.method != "HEAD":
                assert orjson.loads(r.body)["error"] == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), name
            assert await snapshot(srv.state.store) == before, f"{case.id} with {name} changed the store"

        # Control: the very same request with the right token goes through...
        r = await srv.send(case.method, path, body, srv.right())
        assert 200 <= r.code < 300, (
            f"{case.id} with the right token answered {r.code} {r.body[:300]!r}: give the route a working "
            "request in PATH_VALUES / BODIES so the refusals above are known to be refusals of a real request"
        )
        # ...and a write really writes, so "unchanged" above meant something.
        if case.method not in READ_METHODS and (case.handler.__name__, case.method) not in READ_ONLY:
            assert await snapshot(srv.state.store) != before, f"{case.id} with the right token changed nothing"

    serve(scenario)


def test_every_application_route_is_covered() -> None:
    """Nothing is routed outside the admin table except the routes public on purpose."""
    covered = {c.pattern for c in CASES}

    async def scenario(srv: Served) -> None:
        for rule in srv.app.wildcard_router.rules:
            pattern = rule.matcher.regex.pattern.removesuffix("$")
            assert pattern in covered or pattern in PUBLIC, (
                f"route {pattern} ({rule.target.__name__}) is neither in server.http_admin.routes nor public on purpose"
            )
            if pattern not in PUBLIC:
                assert served_methods(rule.target), f"{pattern} serves no method"

    serve(scenario)


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_the_token_unless_metrics_public(public: bool) -> None:
    async def scenario(srv: Served) -> None:
        for headers in BAD_AUTH.values():
            r = await srv.send("GET", "/metrics", headers=headers)
            assert r.code == (200 if public else 401), (headers, r.code)
        r = await srv.send("GET", "/metrics", headers=srv.right())
        assert r.code == 200 and b"scriptgate_" in r.body

    serve(scenario, metrics_public=public)


def test_healthz_is_public_on_purpose_and_read_only() -> None:
    async def scenario(srv: Served) -> None:
        before = await snapshot(srv.state.store)
        for headers in BAD_AUTH.values():
            r = await srv.send("GET", "/healthz", headers=headers)
            assert r.code == 200 and orjson.loads(r.body)["status"] == "ok"
        for method in ("PUT", "POST", "DELETE"):
            r = await srv.send(method, "/healthz", b"{}")
            assert r.code == 405
        assert await snapshot(srv.state.store) == before

    serve(scenario)


def test_the_openapi_document_is_public_on_purpose_and_read_only() -> None:
    async def scenario(srv: Served) -> None:
        before = await snapshot(srv.state.store)
        for headers in BAD_AUTH.values():
            r = await srv.send("GET", "/admin/openapi.json", headers=headers)
            assert r.code == 200 and orjson.loads(r.body)["openapi"].startswith("3.1")
        for method in ("PUT", "POST", "DELETE"):
            r = await srv.send(method, "/admin/openapi.json", b"{}", srv.right())
            assert r.code == 405
        assert await snapshot(srv.state.store) == before

    serve(scenario)


def test_methods_a_route_does_not_serve_change_nothing() -> None:
    """Unserved methods are refused (401 before the method is looked at, or 405), never served."""
    async def scenario(srv: Served) -> None:
        before = await snapshot(srv.state.store)
        for pattern, handler, _ in admin_routes(None):  # type: ignore[arg-type]
            if pattern in PUBLIC:
                continue
            path = Case(pattern, handler, served_methods(handler)[0]).path()
            for method in ("GET", "PUT", "POST", "DELETE", "PATCH"):
                if method in served_methods(handler):
                    continue
                r = await srv.send(method, path, b"{}", srv.right())
                assert r.code == 405, (method, path, r.code)
                r = await srv.send(method, path, b"{}")
                assert r.code in (401, 405), (method, path, r.code)
        assert await snapshot(srv.state.store) == before

    serve(scenario)
