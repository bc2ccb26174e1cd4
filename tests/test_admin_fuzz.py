"""Query-parameter validation and a fuzz run over the admin API.

The fuzz run is generated from the route table (``server.http.admin.routes``, through
test_admin_auth's enumeration): random methods, paths, query strings, bodies and headers
from a seeded generator (reproducible: the seed and the request are in every failure
message). For every answer: never a 5xx, never traceback text, errors are JSON
``{"error", "message"}``, and a refused request (4xx) leaves the store unchanged.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.test_admin_auth import CASES, INVITE, KEY, PATH_VALUES, TOKEN, Served, serve, snapshot

# -- explicit cases ---------------------------------------------------------------------------

BAD_QUERIES = [
    (f"/admin/recordings/{INVITE}?since=1e999", "since"),
    (f"/admin/recordings/{INVITE}?since=nan", "since"),
    (f"/admin/recordings/{INVITE}?since=inf", "since"),
    (f"/admin/recordings/{INVITE}?since=-1", "since"),
    (f"/admin/recordings/{INVITE}?since=1e300", "since"),
    (f"/admin/recordings/{INVITE}?since=yesterday", "since"),
    (f"/admin/recordings/{INVITE}?limit=0", "limit"),
    (f"/admin/recordings/{INVITE}?limit=100001", "limit"),
    (f"/admin/recordings/{INVITE}?limit=99999999999999999999999999", "limit"),
    (f"/admin/recordings/{INVITE}?limit=-5", "limit"),
    (f"/admin/recordings/{INVITE}?limit=%2B5", "limit"),
    (f"/admin/recordings/{INVITE}?limit=5_000", "limit"),
    (f"/admin/recordings/{INVITE}?limit=%D9%A1%D9%A2", "limit"),  # Arabic-Indic digits: int() takes them
    (f"/admin/recordings/{INVITE}?limit=1.5", "limit"),
    (f"/admin/recordings/{INVITE}?limt=5", "limt"),
    (f"/admin/recordings/{INVITE}?limit=5&limit=6", "limit"),
    (f"/admin/recordings/{INVITE}?since=%FF", "since"),
    ("/admin/kv?limit=abc", "limit"),
    ("/admin/kv?limit=1001", "limit"),
    ("/admin/kv?cursor=-1", "cursor"),
    ("/admin/kv?cursor=abc", "cursor"),
    ("/admin/kv?cursor=999999999999999999999999", "cursor"),
    ("/admin/kv?namespace=no%20spaces", "namespace"),
    ("/admin/kv?prefix=" + "p" * 600, "prefix"),
    ("/admin/kv?nope=1", "nope"),
    ("/admin/audit?before=yesterday", "before"),
    ("/admin/audit?limit=1e3", "limit"),
    ("/admin/scripts?x=1", "x"),
    (f"/admin/scripts/{INVITE}/versions/1e3", "version"),
    (f"/admin/scripts/{INVITE}/versions/99999999999999999999", "version"),
    ("/healthz?strict=maybe", "strict"),
    ("/admin/logs?since=1e999", "since"),
    ("/admin/logs?limit=0", "limit"),
    ("/admin/logs?x=1", "x"),
    ("/admin/logs/stream?errors=maybe", "errors"),
    ("/admin/logs/stream?x=1", "x"),
    ("/admin/tokens?x=1", "x"),
]


@pytest.mark.parametrize("path,name", BAD_QUERIES, ids=[p for p, _ in BAD_QUERIES])
def test_bad_query_parameters_are_400_bad_parameter(path: str, name: str) -> None:
    async def scenario(srv: Served) -> None:
        r = await srv.send("GET", path, None, srv.right())
        assert r.code == 400, (r.code, r.body[:300])
        body = orjson.loads(r.body)
        assert body["error"] == "bad_parameter" and name in body["message"], body

    serve(scenario)


def test_good_query_parameters_still_work() -> None:
    async def scenario(srv: Served) -> None:
        for path in (f"/admin/recordings/{INVITE}?since=0&limit=5", f"/admin/recordings/{INVITE}?since=1700000000.5",
                     "/admin/kv?namespace=default&prefix=auth&limit=10&cursor=0", "/admin/audit?limit=3",
                     "/admin/audit?before=1700000000000-0", "/healthz?strict=0", "/admin/scripts"):
            r = await srv.send("GET", path, None, srv.right())
            assert r.code == 200, (path, r.code, r.body[:300])
        r = await srv.send("PUT", f"/admin/scripts/{INVITE}?activate=false",
                           b"def handle(req):\n    return None\n", srv.right())
        assert r.code == 201, r.body

    serve(scenario)


# -- the fuzz run -----------------------------------------------------------------------------

SEEDS = [1, 2, 3]
REQUESTS_PER_SEED = 300
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FROB"]
PARAM_NAMES = ["since", "limit", "cursor", "prefix", "namespace", "before", "activate", "strict", "x", "limt",
               "", "since[]", "\u00e9"]
VALUES = ["", "0", "1", "-1", "5", "1e999", "-1e999", "nan", "NaN", "inf", "1.5", "99999999999999999999999",
          "abc", " 5", "+5", "5_000", "\u0661\u0662", "true", "false", "maybe", "1700000000000-0", "1-2-3",
          "default", "no spaces", "a" * 700, "\x00", "%ff", "\u2603", "0x10", "1-0"]
# Numbers float() and int() take but the store cannot use: drawn as often as all the rest.
EDGE_NUMBERS = ["1e999", "-1e999", "nan", "inf", "-inf", "1e300", "-0.0", "99999999999999999999999"]
PATH_PIECES = [INVITE, "callbackNope", KEY, "1", "0", "-1", "1e999", "%00", "%2F", "..", "a" * 600, "\u2603",
               "x y", "auth:blocklist/members"]
BODIES: list[bytes | None] = [None, b"", b"{}", b"[]", b"null", b"{not json", b'{"value": 5}',
                              b'{"value": "x", "ttl": -1}', b'{"value": ["a"], "type": "set"}', b'{"version": 1}',
                              b'{"version": "1"}', b'{"version": 1e999}', b'{"add": ["q"]}', b'{"add": "q"}',
                              b'{"payload": {}}', b'{"sample": true}', b"\xff\xfe", b"def handle(req):\n  return None\n",
                              b"def handle(req):\n    return deny(\n", b'"' + b"x" * 5000 + b'"']
CONTENT_TYPES = [None, "application/json", "text/plain", "multipart/form-data; boundary=x", "\u00e9"]
WRONG_AUTH = [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}]
# Answers that are not JSON on success, by route pattern.
NOT_JSON_ON_SUCCESS = {"/metrics", r"/admin/recordings/([^/]+)"}
# The live log stream answers a good request by streaming until the client leaves, so random
# requests would only time out there; its bad parameters are in BAD_QUERIES above.
ROUTES = [*sorted({(c.pattern, c.handler) for c in CASES if c.pattern != "/admin/logs/stream"}, key=lambda r: r[0]),
          ("/healthz", None)]
QUERY_ROUTES = [(p, h) for p, h in ROUTES if h is None or any((getattr(h, "query", None) or {}).values())]


def _path(rng: random.Random, pattern: str) -> str:
    import re

    def group(_: Any) -> str:
        piece = rng.choice(PATH_PIECES + list(PATH_VALUES.values()))
        return quote(piece, safe=":" if rng.random() < 0.8 else ":/")

    return re.sub(r"\((?:[^()\\]|\\.)*\)", group, pattern).replace("/?", "").replace("(/.*)?", "")


GOOD_VALUES = {"since": ["0", "1700000000.5"], "limit": ["1", "5", "1000"], "cursor": ["0"], "prefix": ["auth", ""],
               "namespace": ["default"], "before": ["1700000000000-0"], "activate": ["true", "false"],
               "strict": ["0", "1"], "command": ["callbackBeforeAddFriendCommand"], "operationID": ["op-1"],
               "level": ["info", "error"], "errors": ["0", "1"]}


def _query(rng: random.Random, handler: Any, method: str) -> str:
    roll = rng.random()
    if roll < 0.25:
        return ""
    declared = sorted((getattr(handler, "query", None) or {}).get(method, ())) if handler else ["strict"]
    if roll < 0.6 and declared:  # the parameters the endpoint takes, good values mostly
        pairs = [(name, rng.choice(GOOD_VALUES[name] if rng.random() < 0.4 else rng.choice((VALUES, EDGE_NUMBERS))))
                 for name in rng.sample(declared, rng.randint(1, len(declared)))]
    else:
        pairs = [(rng.choice(PARAM_NAMES), rng.choice(VALUES)) for _ in range(rng.randint(1, 3))]
    return "?" + "&".join(f"{quote(k)}={quote(v, safe='%')}" for k, v in pairs)


def _request(rng: random.Random) -> tuple[str, str, bytes | None, dict[str, str]]:
    # Half the requests go to the routes that take query parameters: most of the surface.
    pattern, handler = rng.choice(QUERY_ROUTES if rng.random() < 0.5 else ROUTES)
    served = [c.method for c in CASES if c.pattern == pattern] or ["GET"]
    method = rng.choice(served if rng.random() < 0.7 else METHODS)
    headers = {"Authorization": f"Bearer {TOKEN}"} if rng.random() < 0.85 else dict(rng.choice(WRONG_AUTH))
    content_type = rng.choice(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if rng.random() < 0.2:
        headers["X-ScriptGate-Actor"] = rng.choice(["ops", "\xe9" * 80, "a\tb", ""])
    body = rng.choice(BODIES)
    if method in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE") and body:
        body = None if rng.random() < 0.7 else body
    valid = [c.path() for c in CASES if c.pattern == pattern]
    path = valid[0] if valid and rng.random() < 0.6 else _path(rng, pattern)  # mostly paths that exist
    return method, path + _query(rng, handler, method), body, headers


@pytest.mark.parametrize("seed", SEEDS)
def test_admin_fuzz(seed: int) -> None:
    async def scenario(srv: Served) -> None:
        rng = random.Random(seed)
        for i in range(REQUESTS_PER_SEED):
            method, path, body, headers = _request(rng)
            where = f"seed {seed} request {i}: {method} {path[:200]} body={body[:80] if body else body!r}"
            before = await snapshot(srv.state.store)
            r = await srv.send(method, path, body, headers)
            assert r.code < 500, f"{where} -> {r.code} {r.body[:300]!r}"
            text = r.body or b""
            assert b"Traceback" not in text and b'File "' not in text, where
            if method == "HEAD":
                continue
            if r.code >= 400:
                data = orjson.loads(text)
                assert isinstance(data, dict) and isinstance(data.get("error"), str), f"{where} -> {text[:300]!r}"
                assert isinstance(data.get("message"), str) and data["message"], f"{where} -> {text[:300]!r}"
                after = await snapshot(srv.state.store)
                assert after == before, f"{where} -> {r.code} but the store changed"
            elif text and not any(_matches(p, path) for p in NOT_JSON_ON_SUCCESS):
                orjson.loads(text)

    serve(scenario)


def _matches(pattern: str, path: str) -> bool:
    import re

    return re.fullmatch(pattern, path.partition("?")[0]) is not None
