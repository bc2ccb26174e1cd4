"""Authentication on every admin route, generated from the route table.

For every route of ``server.http.admin.routes`` and every HTTP method its handler serves,
the same request is sent with no token and with several wrong ones (each must be 401 and
leave the store byte for byte unchanged) and then with the right token (which must
succeed and, for a write method, change the store: this proves the refused requests were
ones that would have written). A route or method added later is covered without editing
this file; one whose request cannot be guessed fails the control and asks for an example
below. ``test_every_application_route_is_covered`` checks that nothing reaches the
application outside this table except the routes that are public on purpose.

Served in process with the production assembly (``make_app`` behind ``CallbackServer``),
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
import tornado.netutil
import tornado.web

from sandbox.api import ALLOW, RunResult
from server.config import Config
from server.http.admin import routes as admin_routes
from server.serve import http_server
from server.service.state import build_state
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
PATH_VALUES = {"name": INVITE, "number": "1", "raw": KEY, "token_id": "0123456789abcdef"}
# Request bodies by (handler class, method) for the control to succeed.
BODIES: dict[tuple[str, str], Any] = {
    ("ScriptHandler", "PUT"): "def handle(req):\n    return deny(5003, 'v3')\n",
    ("ActivateHandler", "POST"): {"version": 1},
    ("TestHandler", "POST"): {"payload": PAYLOAD, "source": "def handle(req):\n    return None\n"},
    ("KVKeyHandler", "PUT"): {"value": ["a", "b", "c"], "type": "set"},
    ("KVMembersHandler", "POST"): {"add": ["b"]},
    ("TokensHandler", "POST"): {"name": "made-by-test", "scopes": ["read"]},
}
# Routes whose answer never ends (server-sent events): the control reads the first bytes.
STREAMING = {"LogsStreamHandler"}
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
    scopes: Any = None  # the route table's {method: scope}

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
    return [Case(p, h, m, kw.get("scopes")) for p, h, kw in table if p not in PUBLIC for m in served_methods(h)]


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


# Scoped tokens made by ``prepare_store``, by name: (scopes, commands, namespaces).
SCOPED: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "t-read": (("read",), (), ()),
    "t-deploy": (("deploy",), (), ()),
    "t-deploy-invite": (("deploy",), (INVITE,), ()),
    "t-deploy-other": (("deploy",), ("callbackBeforeSendSingleMsgCommand",), ()),
    "t-kv": (("kv-write",), (), ()),
    "t-kv-default": (("kv-write",), (), ("default",)),
    "t-kv-other": (("kv-write",), (), ("other",)),
    "t-admin": (("admin",), (), ()),
}


def secret_of(name: str) -> str:
    return f"sg_test_secret_for_{name}"


async def prepare_store(store: Any) -> None:
    """What the control requests act on: two versions (v2 live), a set in the KV, and the
    scoped tokens of SCOPED (the first with the id in PATH_VALUES, for DELETE)."""
    from server.tokens import Token, digest

    for source in (SOURCE_V1, SOURCE_V2):
        await store.put_version(INVITE, source, hashlib.sha256(source.encode()).hexdigest(), True, "setup")
    await store.kv_write("default", KEY, "set", ["a"], None, "setup")
    for i, (name, (scopes, commands, namespaces)) in enumerate(SCOPED.items()):
        token_id = PATH_VALUES["token_id"] if i == 0 else f"{i:016x}"
        token = Token(token_id, name, scopes, commands, namespaces, 1.0, digest(secret_of(name)))
        await store.token_create(token_id, name, token.stored(), "setup", {})


def allowed(case: Case, name: str) -> bool:
    """Whether the token ``name`` of SCOPED may make ``case``'s request (from the route
    table's declared scope, and the token's limits against PATH_VALUES / namespace default)."""
    from server.tokens import Token

    scopes, commands, namespaces = SCOPED[name]
    need = case.scopes[case.method]
    token = Token("x", name, scopes, commands, namespaces)
    command = PATH_VALUES["name"] if case.handler.limited_by == "command" else None
    namespace = "default" if case.handler.limited_by == "namespace" else None
    return token.allows(need, command=command, namespace=namespace)


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

    async def call(self, case: Case, headers: dict[str, str]) -> tuple[int, bytes]:
        """``case``'s request: (status, body), or for a never-ending answer (STREAMING) the
        status and the first bytes of the body."""
        path, body = case.path(), case.body()
        if case.handler.__name__ not in STREAMING:
            r = await self.send(case.method, path, body, headers)
            return r.code, r.body
        host, port = self.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"{case.method} {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            rest = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length:\s*(\d+)", rest.lower())
            first = await reader.readexactly(int(length.group(1))) if length else await reader.read(4096)
            return int(status_line.split()[1]), first
        finally:
            writer.close()


def serve(test: Callable[[Served], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        store = await open_store(None, prefix="auth", isolated=True)
        await prepare_store(store)
        state = await build_state(Config(**config), TOKEN, store=store, pool=StubPool())
        await state.table.refresh()
        http = http_server(state)  # the server `scriptgate serve` runs
        app = http.delegate.app
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
        code, answer = await srv.call(case, srv.right())
        assert 200 <= code < 300, (
            f"{case.id} with the right token answered {code} {answer[:300]!r}: give the route a working "
            "request in PATH_VALUES / BODIES so the refusals above are known to be refusals of a real request"
        )
        # ...and a write really writes, so "unchanged" above meant something.
        if case.method not in READ_METHODS and (case.handler.__name__, case.method) not in READ_ONLY:
            assert await snapshot(srv.state.store) != before, f"{case.id} with the right token changed nothing"

    serve(scenario)


def test_every_route_declares_a_known_scope_for_every_method() -> None:
    from server.tokens import SCOPES

    for case in CASES:
        assert case.scopes and case.scopes.get(case.method) in SCOPES, f"{case.id}: no scope in the route table"
        assert set(case.scopes) <= set(served_methods(case.handler)), case.id


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_route_and_method_against_every_scope(case: Case) -> None:
    """Each scoped token is refused (403, store unchanged) where the route table's scope and
    the token's limits say so; where they allow it, the request succeeds (and a write writes).
    Refusals first on one store; each allowed token then gets a fresh store."""
    denied = [n for n in SCOPED if not allowed(case, n)]
    granted = [n for n in SCOPED if allowed(case, n)]
    assert "t-admin" in granted

    async def refusals(srv: Served) -> None:
        before = await snapshot(srv.state.store)
        for name in denied:
            code, answer = await srv.call(case, {"Authorization": f"Bearer {secret_of(name)}"})
            assert code == 403, f"{case.id} with {name}: {code} {answer[:200]!r}"
            assert orjson.loads(answer)["error"] == "insufficient_scope"
            assert await snapshot(srv.state.store) == before, f"{case.id} with {name} changed the store"

    serve(refusals)
    for name in granted:
        async def control(srv: Served, name: str = name) -> None:
            before = await snapshot(srv.state.store)
            code, answer = await srv.call(case, {"Authorization": f"Bearer {secret_of(name)}"})
            assert 200 <= code < 300, f"{case.id} with {name}: {code} {answer[:300]!r}"
            if case.method not in READ_METHODS and (case.handler.__name__, case.method) not in READ_ONLY:
                assert await snapshot(srv.state.store) != before, f"{case.id} with {name} changed nothing"

        serve(control)


def test_scope_matrix_is_not_trivial() -> None:
    """Guards ``allowed``: every non-admin scope is refused somewhere and granted somewhere,
    and the limits matter (a deploy token for another command, kv-write for another namespace)."""
    for name in SCOPED:
        if name == "t-admin":
            continue
        assert any(not allowed(c, name) for c in CASES), name
    for name in ("t-read", "t-deploy", "t-deploy-invite", "t-kv", "t-kv-default"):
        assert any(allowed(c, name) for c in CASES), name
    put = next(c for c in CASES if c.id == "PUT /admin/scripts/([^/]+)")
    assert allowed(put, "t-deploy-invite") and not allowed(put, "t-deploy-other")
    kv = next(c for c in CASES if c.id == "PUT /admin/kv/(.+)")
    assert allowed(kv, "t-kv-default") and not allowed(kv, "t-kv-other")


def test_revoked_token_is_refused_and_audit_names_the_actor() -> None:
    async def scenario(srv: Served) -> None:
        r = await srv.send("POST", "/admin/tokens", orjson.dumps({"name": "ci", "scopes": ["deploy"],
                                                                 "commands": [INVITE]}), srv.right())
        assert r.code == 201, r.body
        made = orjson.loads(r.body)
        secret = made["token"]
        assert secret.startswith("sg_") and made["commands"] == [INVITE] and made["scopes"] == ["deploy"]
        mine = {"Authorization": f"Bearer {secret}", "X-ScriptGate-Actor": "ci-cli"}
        r = await srv.send("PUT", f"/admin/scripts/{INVITE}", SOURCE_V1.encode(), mine)
        assert r.code in (200, 201), r.body
        listed = orjson.loads((await srv.send("GET", "/admin/tokens", headers=srv.right())).body)["tokens"]
        assert {t["name"] for t in listed} >= {"ci", "t-read"}
        assert all("token" not in t and "sha256" not in t for t in listed)
        stored = await srv.state.store.tokens_all()
        assert secret not in orjson.dumps(stored).decode() and hashlib.sha256(secret.encode()).hexdigest() in \
            orjson.dumps(stored).decode()
        r = await srv.send("DELETE", f"/admin/tokens/{made['id']}", headers=srv.right())
        assert r.code == 200 and orjson.loads(r.body)["revoked"] is True
        r = await srv.send("PUT", f"/admin/scripts/{INVITE}", SOURCE_V2.encode(), mine)
        assert r.code == 401
        r = await srv.send("POST", "/admin/tokens", orjson.dumps({"name": "ci", "scopes": ["nope"]}), srv.right())
        assert r.code == 400
        r = await srv.send("POST", "/admin/tokens", orjson.dumps({"name": "t-read", "scopes": ["read"]}),
                           srv.right())
        assert r.code == 409
        entries = orjson.loads((await srv.send("GET", "/admin/audit", headers=srv.right())).body)["entries"]
        actions = {(e["action"], e["actor"].split("@")[0]) for e in entries}
        assert ("upload", "ci+ci-cli") in actions, actions
        assert ("token_create", "admin") in actions and ("token_revoke", "admin") in actions, actions

    serve(scenario)


def test_every_application_route_is_covered() -> None:
    """Nothing is routed outside the admin table except the routes public on purpose."""
    covered = {c.pattern for c in CASES}

    async def scenario(srv: Served) -> None:
        for rule in srv.app.wildcard_router.rules:
            pattern = rule.matcher.regex.pattern.removesuffix("$")
            assert pattern in covered or pattern in PUBLIC, (
                f"route {pattern} ({rule.target.__name__}) is neither in server.http.admin.routes nor public on purpose"
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
