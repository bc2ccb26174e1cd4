"""The OpenAPI 3.1 description of the admin API (server/data/openapi.json, served at
/admin/openapi.json): a valid document (openapi-spec-validator), the same routes as the
route table, and real responses of a live server that match it (status, content type, JSON
body against the schema, with openapi-schema-validator's OAS 3.1 validator).

Operations marked ``x-scriptgate-feature`` (per-callback logs, scoped tokens) are served by
routes that may not be in this tree's route table yet: while a route is missing they are
checked as a document only; once it is there, they are called like every other route."""

from __future__ import annotations

import http.client
import re
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from server import __version__
from server.http.admin import OPENAPI_PATH, routes
from server.samples import sample
from tests.server_proc import ServerProc, start_server
from tests.timing import FAR_S

DOC: dict[str, Any] = orjson.loads(OPENAPI_PATH.read_bytes())
METHODS = ("get", "put", "post", "delete", "patch")
FRIEND = "callbackBeforeAddFriendCommand"
LOG_ROUTES = {"/admin/logs", "/admin/logs/stream"}


def _shape(path: str) -> str:
    """A route regex or a path template with its parameters as {}: comparable."""
    path = re.sub(r"\{[^}]+\}", "{}", path)
    path = re.sub(r"\((?:[^()]|\([^()]*\))*\)", "{}", path)  # regex groups
    return path.removesuffix("/?").replace("\\", "")


ROUTE_SHAPES = {_shape(pattern) for pattern, _, _ in routes(None)}  # type: ignore[arg-type]


def served(template: str) -> bool:
    return _shape(template) in ROUTE_SHAPES


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


# --- the document -------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1() -> None:
    validate_spec(DOC)
    assert DOC["openapi"].startswith("3.1.")
    assert DOC["info"]["version"] == __version__
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    documented = {_shape(p) for p in DOC["paths"]}
    assert ROUTE_SHAPES - documented == set(), "routes missing from openapi.json"
    # A documented path the table lacks must be one of the marked features built elsewhere.
    for path in {p for p in DOC["paths"] if not served(p)}:
        ops = [op for m, op in DOC["paths"][path].items() if m in METHODS]
        assert ops and all("x-scriptgate-feature" in op for op in ops), f"{path} is documented but not served"


def test_every_operation_documents_errors_and_a_success() -> None:
    for path, method, op in operations():
        codes = set(op["responses"])
        assert any(c.startswith("2") for c in codes), (path, method)
        if op.get("security") != []:
            assert "401" in codes, f"{method} {path}: needs the token, so 401 is documented"


# --- against a live server ----------------------------------------------------------------------

@dataclass
class Call:
    template: str
    method: str
    path: str
    body: Any = None
    status: int = 200
    token: bool | str = True
    stream: bool = False  # a never-ending response: check status and headers only


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        parts = node["$ref"].removeprefix("#/").split("/")
        node = DOC
        for part in parts:
            node = node[part]
    return node


def check_response(call: Call, status: int, content_type: str, body: bytes) -> None:
    op = DOC["paths"][call.template][call.method.lower()]
    assert str(status) in op["responses"], f"{call.method} {call.path}: {status} is not documented"
    response = _resolve(op["responses"][str(status)])
    content = response.get("content", {})
    if not content:  # e.g. 204: documented without a body
        assert not body, f"{call.method} {call.path} {status}: a body the document does not describe"
        return
    media = content_type.split(";")[0].strip()
    assert media in content, f"{call.method} {call.path} {status}: {media} is not documented ({list(content)})"
    if call.stream:
        return
    schema = {**content[media]["schema"], "components": DOC["components"]}
    validator = OAS31Validator(schema)
    if media == "application/json":
        validator.validate(orjson.loads(body))
    elif content[media].get("x-ndjson"):
        lines = body.splitlines()
        assert lines, f"{call.path}: no records to check"
        for line in lines:
            validator.validate(orjson.loads(line))
    else:
        assert isinstance(body.decode(), str)


def perform(server: ServerProc, call: Call) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=FAR_S)
    headers = {}
    if call.token is True:
        headers["Authorization"] = f"Bearer {server.token}"
    elif isinstance(call.token, str):
        headers["Authorization"] = f"Bearer {call.token}"
    body = call.body if isinstance(call.body, (bytes, type(None))) else orjson.dumps(call.body)
    if isinstance(call.body, str):
        body = call.body.encode()
    try:
        conn.request(call.method, call.path, body=body, headers=headers)
        if call.stream:
            # An event stream may send its headers only with its first event: make callbacks
            # until the answer starts (bounded by FAR_S), then read the headers only.
            deadline = time.monotonic() + FAR_S
            while not select.select([conn.sock], [], [], 0.5)[0]:
                assert time.monotonic() < deadline, f"{call.path}: no answer"
                assert server.callback(FRIEND, sample(FRIEND)).status == 200
        resp = conn.getresponse()
        data = b"" if call.stream else resp.read()
        return resp.status, resp.getheader("Content-Type") or "", data
    finally:
        conn.close()


ALLOW = "def handle(req):\n    log('seen', req['fromUserID'])\n    return allow()\n"
DENY = "def handle(req):\n    return deny(5002, 'no')\n"
SC = "/admin/scripts/{command}"
KEY = "/admin/kv/{key}"


def calls() -> list[Call]:
    s = f"/admin/scripts/{FRIEND}"
    return [
        Call("/healthz", "GET", "/healthz", token=False),
        Call("/metrics", "GET", "/metrics"),
        Call("/metrics", "GET", "/metrics", token="wrong", status=401),
        Call("/admin/openapi.json", "GET", "/admin/openapi.json", token=False),
        Call(SC, "PUT", s, ALLOW, status=201),
        Call(SC, "PUT", s, ALLOW, status=200),  # the live source again: unchanged
        Call(SC, "PUT", s + "?activate=false", DENY, status=201),
        Call(SC, "PUT", s, "def handle(req):\n    return allow(\n", status=422),
        Call(SC, "PUT", "/admin/scripts/callbackNope", ALLOW, status=404),
        Call("/admin/scripts", "GET", "/admin/scripts"),
        Call("/admin/scripts", "GET", "/admin/scripts", token=False, status=401),
        Call(SC, "GET", s),
        Call(SC, "GET", "/admin/scripts/callbackBeforeAddBlackCommand", status=404),
        Call(SC + "/versions", "GET", s + "/versions"),
        Call(SC + "/versions/{version}", "GET", s + "/versions/1"),
        Call(SC + "/versions/{version}", "GET", s + "/versions/99", status=404),
        Call(SC + "/activate", "POST", s + "/activate", {"version": 1}),
        Call(SC + "/activate", "POST", s + "/activate", {"version": "1"}, status=400),
        Call(SC + "/test", "POST", s + "/test", {"sample": True}),
        Call(SC + "/test", "POST", s + "/test", {"payload": sample(FRIEND), "source": "def handle(req):\n    1/0\n"}),
        Call(SC + "/test", "POST", s + "/test", {"payload": 1}, status=400),
        Call("/admin/recordings/{command}", "GET", f"/admin/recordings/{FRIEND}?limit=10"),
        Call("/admin/logs", "GET", f"/admin/logs?command={FRIEND}&limit=10"),
        Call("/admin/logs/stream", "GET", f"/admin/logs/stream?command={FRIEND}", stream=True),
        Call(SC, "DELETE", s),
        Call(SC, "DELETE", s, status=404),
        Call(KEY, "PUT", "/admin/kv/config:limit?namespace=oa", {"value": "50", "ttl": 60}),
        Call(KEY, "PUT", "/admin/kv/bad", {"value": 5}, status=400),
        Call("/admin/kv/{key}/members", "POST", "/admin/kv/blocklist:users/members?namespace=oa", {"add": ["u1", "u2"]}),
        Call(KEY, "GET", "/admin/kv/blocklist:users?namespace=oa"),
        Call(KEY, "GET", "/admin/kv/none?namespace=oa", status=404),
        Call("/admin/kv", "GET", "/admin/kv?namespace=oa&limit=10"),
        Call("/admin/kv", "GET", "/admin/kv?namespace=bad!ns", status=400),
        Call(KEY, "DELETE", "/admin/kv/config:limit?namespace=oa"),
        Call(KEY, "DELETE", "/admin/kv/config:limit?namespace=oa", status=404),
        Call("/admin/audit", "GET", "/admin/audit?limit=20"),
        Call("/admin/audit", "GET", "/admin/audit?limit=0", status=400),
        Call("/admin/tokens", "POST", "/admin/tokens", {"name": "oa-read", "scopes": ["read"]}, status=201),
        Call("/admin/tokens", "GET", "/admin/tokens"),
    ]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    srv = start_server("--record")
    yield srv
    srv.stop()


def test_live_responses_match_the_document(server: ServerProc) -> None:
    exercised: set[tuple[str, str]] = set()
    for call in calls():
        if not served(call.template):
            continue  # a feature built elsewhere, not in this tree yet: the document is checked above
        if call.template == "/admin/logs/stream" or call.template.startswith("/admin/recordings"):
            # something to record and log first
            assert server.callback(FRIEND, sample(FRIEND)).status == 200
        status, content_type, body = perform(server, call)
        assert status == call.status, f"{call.method} {call.path}: {status} {body[:300]!r}"
        check_response(call, status, content_type, body)
        exercised.add((call.template, call.method.lower()))
    if served("/admin/tokens/{id}"):
        made = orjson.loads(perform(server, Call("/admin/tokens", "POST", "/admin/tokens",
                                                 {"name": "oa-gone", "scopes": ["read"]}))[2])
        call = Call("/admin/tokens/{id}", "DELETE", f"/admin/tokens/{made['id']}")
        status, content_type, body = perform(server, call)
        check_response(call, status, content_type, body)
        exercised.add((call.template, "delete"))
    missing = {(p, m) for p, m, _ in operations() if served(p)} - exercised
    assert not missing, f"operations never called: {sorted(missing)}"


def test_served_document_is_the_checked_in_file_without_a_token(server: ServerProc) -> None:
    r = server.request("GET", "/admin/openapi.json", token=False)
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert orjson.loads(r.body) == DOC


def test_the_admin_network_allow_list_covers_the_document(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('admin_allow_cidrs = ["10.0.0.0/8"]\n')
    srv = start_server("--config", str(cfg))
    try:
        r = srv.request("GET", "/admin/openapi.json", token=False)
        assert r.status == 403 and orjson.loads(r.body)["error"] == "forbidden"
        check_response(Call("/admin/openapi.json", "GET", "/admin/openapi.json"), r.status,
                       r.headers["content-type"], r.body)
    finally:
        srv.stop()
