"""The admin API end to end against a real ``scriptgate serve`` process."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime

import pytest

from server.catalog import catalog
from server.samples import sample_bytes
from tests.gojson import go_headers
from tests.server_proc import start_server

INVITE = "callbackBeforeInviteJoinGroupCommand"
FRIEND = "callbackBeforeAddFriendCommand"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}
PAYLOAD = {"callbackCommand": INVITE, "groupID": "g1", "invitedUserIDs": ["u1", "u2"], "reason": "", "operationID": "o"}


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.stop()


ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def recent_iso(value: object) -> bool:
    """An ISO-8601 UTC time with milliseconds, within a day of now (the admin JSON format)."""
    if not isinstance(value, str) or not ISO_RE.match(value):
        return False
    when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return abs((datetime.now(UTC) - when).total_seconds()) < 86400


def unique(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:10]}"


# --- auth ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/admin/scripts", "/admin/kv", "/admin/audit", f"/admin/scripts/{INVITE}", "/metrics"])
@pytest.mark.parametrize("token", [False, "wrong-token", ""])
def test_admin_needs_the_token(server, path, token):
    r = server.request("GET", path, token=token)
    assert r.status == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_token_must_be_bearer(server):
    r = server.request("GET", "/admin/scripts", headers={"Authorization": f"Basic {server.token}"}, token=False)
    assert r.status == 401


def test_generated_token_is_printed_once():
    srv = start_server(token=None)
    try:
        lines = [x for x in srv.output if "admin token" in x]
        assert len(lines) == 1
        token = lines[0].rsplit(" ", 1)[1].strip()
        assert len(token) >= 32
        assert srv.request("GET", "/admin/scripts", token=token).status == 200
        assert srv.request("GET", "/admin/scripts", token="x" * len(token)).status == 401
    finally:
        srv.stop()


def test_unknown_admin_path_is_json_404(server):
    r = server.request("GET", "/admin/nothing-here")
    assert r.status == 404 and r.json()["error"] == "not_found"


# --- scripts ------------------------------------------------------------------------------

def test_upload_versions_drafts_activate_rollback_delete(server):
    cmd = FRIEND
    v1 = "def handle(req):\n    return deny(5001, 'v1')\n"
    r = server.upload(cmd, v1)
    assert r.status == 201
    body = r.json()
    assert body["command"] == cmd and body["active"] is True
    assert body["sha256"] == hashlib.sha256(v1.encode()).hexdigest()
    n1 = body["version"]
    assert server.callback(cmd, {}).json()["errMsg"] == "v1"

    # a draft is stored but not live
    v2 = "def handle(req):\n    return deny(5002, 'v2')\n"
    r = server.upload(cmd, v2, activate=False)
    assert r.status == 201 and r.json()["active"] is False
    n2 = r.json()["version"]
    assert n2 == n1 + 1
    assert server.callback(cmd, {}).json()["errMsg"] == "v1"

    live = server.request("GET", f"/admin/scripts/{cmd}").json()
    assert live["source"] == v1 and live["active_version"] == n1 and live["version"] == n1

    versions = server.request("GET", f"/admin/scripts/{cmd}/versions").json()["versions"]
    assert [v["version"] for v in versions][-2:] == [n1, n2]
    assert all(recent_iso(v["created_at"]) for v in versions)
    assert recent_iso(live["created_at"]) and recent_iso(live["updated_at"])
    assert live["created_at"] <= live["updated_at"]
    assert server.request("GET", f"/admin/scripts/{cmd}/versions/{n2}").json()["source"] == v2
    assert server.request("GET", f"/admin/scripts/{cmd}/versions/9999").status == 404

    # promote, then roll back
    r = server.admin("POST", f"/admin/scripts/{cmd}/activate", {"version": n2})
    assert r.status == 200 and r.json()["active_version"] == n2 and r.json()["previous_version"] == n1
    assert server.callback(cmd, {}).json()["errMsg"] == "v2"
    assert server.admin("POST", f"/admin/scripts/{cmd}/activate", {"version": n1}).status == 200
    assert server.callback(cmd, {}).json()["errMsg"] == "v1"
    assert server.admin("POST", f"/admin/scripts/{cmd}/activate", {"version": 12345}).status == 404
    assert server.admin("POST", f"/admin/scripts/{cmd}/activate", {"version": "1"}).status == 400

    listing = server.request("GET", "/admin/scripts").json()["scripts"]
    entry = next(s for s in listing if s["command"] == cmd)
    assert entry["active_version"] == n1 and n2 in entry["versions"] and recent_iso(entry["updated_at"])

    # delete stops the script; versions are kept
    r = server.request("DELETE", f"/admin/scripts/{cmd}")
    assert r.status == 200
    assert server.callback(cmd, {}).json() == ACK
    assert server.request("GET", f"/admin/scripts/{cmd}").status == 404
    assert len(server.request("GET", f"/admin/scripts/{cmd}/versions").json()["versions"]) >= 2
    assert server.request("DELETE", f"/admin/scripts/{cmd}").status == 404

    audit = server.request("GET", "/admin/audit?limit=50").json()["entries"]
    actions = [(e["action"], e["target"]) for e in audit if e["target"] == cmd]
    assert ("upload", cmd) in actions and ("delete", cmd) in actions
    assert any(e["action"] in ("activate", "rollback") and e["before"] == n2 and e["after"] == n1 for e in audit)
    assert all(e["actor"] and recent_iso(e["ts"]) for e in audit)


def test_invalid_script_422_with_line_and_col(server):
    r = server.upload(INVITE, "def handle(req):\n    x = req.__class__\n    return allow()\n")
    assert r.status == 422
    body = r.json()
    assert body["error"] == "invalid_script"
    assert body["details"] and body["details"][0]["line"] == 2 and "col" in body["details"][0]
    r = server.upload(INVITE, "def handle(req):\n    return allow(\n")
    assert r.status == 422 and r.json()["details"][0]["line"] >= 1
    r = server.upload(INVITE, "def other(req):\n    return allow()\n")
    assert r.status == 422 and "handle" in r.json()["message"]
    r = server.upload(INVITE, "import os\ndef handle(req):\n    return allow()\n")
    assert r.status == 422 and r.json()["details"][0]["line"] == 1


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"", 422, "empty"),
        (b"   \n\n", 422, "empty"),
        (b"\x00\x01\x02binary", 422, "NUL"),
        (b"def handle(req):\n    return '\xff'\n", 422, "UTF-8"),
        (b"# " + b"x" * 70_000 + b"\ndef handle(req): pass\n", 413, "larger"),
    ],
)
def test_bad_uploads(server, body, status, needle):
    r = server.request("PUT", f"/admin/scripts/{INVITE}", body)
    assert r.status == status
    assert needle in r.json()["message"]


def test_upload_unknown_command(server):
    r = server.upload("callbackNope", "def handle(req):\n    return allow()\n")
    assert r.status == 404 and r.json()["error"] == "unknown_command"


def test_upload_refuses_literal_results_openim_cannot_use(server):
    r = server.upload(FRIEND, "def handle(req):\n    return allow(toUserID='x')\n", activate=False)
    assert r.status == 422 and r.json()["error"] == "invalid_script"
    [detail] = r.json()["details"]
    assert (detail["line"], detail["col"]) == (2, 26) and "cannot change any field" in detail["message"]
    r = server.upload(FRIEND, "def handle(req):\n    return deny(99, 'x')\n", activate=False)
    assert r.status == 422 and "errCode 99 is outside" in r.json()["message"]
    # a field name that differs only in case works (OpenIM ignores key case): a warning
    r = server.upload("callbackBeforeSetGroupMemberInfoCommand", "def handle(req):\n    return allow(nickname='x')\n",
                      activate=False)
    assert r.status == 201
    assert any("did you mean nickName?" in w["message"] for w in r.json()["warnings"])


# --- test endpoint ------------------------------------------------------------------------

def test_test_endpoint_shape_and_no_side_effects(server):
    key = unique("blocked")
    server.admin("POST", f"/admin/kv/{key}/members", {"add": ["u2"]})
    source = (
        "def handle(req):\n"
        f"    kv.sadd({key!r}, 'u1')\n"
        f"    kv.set({unique('written')!r}, 'x')\n"
        "    log('checking', len(req['invitedUserIDs']))\n"
        f"    flags = kv.smismember({key!r}, req['invitedUserIDs'])\n"
        "    if all(flags):\n"
        "        return deny(5001, 'all blocked')\n"
        "    return allow(invitedUserIDs=[u for u, b in zip(req['invitedUserIDs'], flags) if not b])\n"
    )
    r = server.admin("POST", f"/admin/scripts/{INVITE}/test", {"payload": PAYLOAD, "source": source})
    assert r.status == 200
    body = r.json()
    assert set(body) >= {"reply", "logs", "kv_ops", "elapsed_ms", "error"}
    assert body["error"] is None
    # the run saw its own write (u1 added in the scratch copy) -> both blocked -> deny
    assert body["reply"]["nextCode"] == 1 and body["reply"]["errCode"] == 5001
    assert body["logs"] == ["checking 2"]
    assert body["kv_ops"] == 3
    assert isinstance(body["elapsed_ms"], (int, float))
    # live data untouched
    live = server.request("GET", f"/admin/kv/{key}").json()
    assert live["value"] == ["u2"]


@pytest.mark.parametrize(
    "source, kind, needle",
    [
        ("def handle(req):\n    raise ValueError('nope')\n", "exception", "nope"),
        ("def handle(req):\n    while True:\n        pass\n", "budget", ""),
        ("def handle(req):\n    return allow(groupID='x')\n", "invalid_result", "groupID"),
        ("def handle(req):\n    return req.__class__\n", "policy", ""),
    ],
)
def test_test_endpoint_error_kinds(server, source, kind, needle):
    r = server.admin("POST", f"/admin/scripts/{INVITE}/test", {"payload": PAYLOAD, "source": source})
    assert r.status == 200
    body = r.json()
    assert body["error"]["kind"] == kind, body
    assert needle in body["error"]["message"]
    assert len(body["error"]["message"]) <= 600
    assert "/work" not in body["error"]["message"] and "site-packages" not in body["error"]["message"]
    error = body["reply"].pop("error", None)
    assert body["reply"] == ACK
    # only an invalid result says so in the reply OpenIM gets
    assert (error is not None) == (kind == "invalid_result")
    if error is not None:
        assert error == {"kind": "invalid_result", "message": body["error"]["message"]}


def test_test_endpoint_by_version_and_live(server):
    n = server.upload(FRIEND, "def handle(req):\n    return deny(5050, 'vx')\n", activate=False).json()["version"]
    r = server.admin("POST", f"/admin/scripts/{FRIEND}/test", {"payload": {}, "version": n})
    assert r.json()["reply"]["errCode"] == 5050
    assert server.admin("POST", f"/admin/scripts/{FRIEND}/test", {"payload": {}, "version": 99999}).status == 404
    assert server.admin("POST", f"/admin/scripts/{FRIEND}/test", {"payload": []}).status == 400
    assert server.admin("POST", f"/admin/scripts/{FRIEND}/test", b"{bad").status == 400


def test_test_endpoint_with_the_sample(server):
    source = "def handle(req):\n    return deny(5001, 'no', req['groupID'] + ':' + ','.join(req['invitedUserIDs']))\n"
    r = server.admin("POST", f"/admin/scripts/{INVITE}/test", {"sample": True, "source": source})
    assert r.status == 200, r.body
    assert r.json()["reply"]["errDlt"] == "12345:user1,user2"  # the shipped sample's values
    both = server.admin("POST", f"/admin/scripts/{INVITE}/test", {"sample": True, "payload": PAYLOAD, "source": source})
    assert both.status == 400 and "not both" in both.json()["message"]
    assert server.admin("POST", f"/admin/scripts/{INVITE}/test", {"sample": "yes", "source": source}).status == 400
    neither = server.admin("POST", f"/admin/scripts/{INVITE}/test", {"sample": False, "source": source})
    assert neither.status == 400 and '"sample": true' in neither.json()["message"]


def test_every_sample_is_accepted_by_the_server(server):
    for name in sorted(catalog().commands):
        r = server.request("POST", f"/{name}", sample_bytes(name), headers=go_headers(), token=False)
        assert r.status == 200, (name, r.body)
        assert r.json()["actionCode"] == 0, name


# --- KV -----------------------------------------------------------------------------------

def test_kv_string_set_hash_list_roundtrip(server):
    s, st, h, li = unique("s"), unique("set"), unique("h"), unique("l")
    assert server.admin("PUT", f"/admin/kv/{s}", {"value": "hello", "ttl": 100}).status == 200
    got = server.request("GET", f"/admin/kv/{s}").json()
    assert got["type"] == "string" and got["value"] == "hello" and 0 < got["ttl"] <= 100
    assert server.admin("PUT", f"/admin/kv/{st}", {"type": "set", "value": ["b", "a"]}).status == 200
    assert server.request("GET", f"/admin/kv/{st}").json()["value"] == ["a", "b"]
    assert server.admin("PUT", f"/admin/kv/{h}", {"value": {"f": "1"}}).status == 200
    assert server.request("GET", f"/admin/kv/{h}").json()["value"] == {"f": "1"}
    assert server.admin("PUT", f"/admin/kv/{li}", {"type": "list", "value": ["x", "y"]}).status == 200
    assert server.request("GET", f"/admin/kv/{li}").json()["value"] == ["x", "y"]
    prefix = s.split(":")[0] + ":"
    listed = server.request("GET", f"/admin/kv?prefix={prefix}&limit=1000").json()["keys"]
    assert any(k["key"] == s for k in listed)
    assert server.request("DELETE", f"/admin/kv/{s}").status == 200
    assert server.request("GET", f"/admin/kv/{s}").status == 404
    assert server.request("DELETE", f"/admin/kv/{s}").status == 404


def test_kv_members_and_wrong_type(server):
    key = unique("blocklist")
    r = server.admin("POST", f"/admin/kv/{key}/members", {"add": ["u1", "u2", "u3"]})
    assert r.status == 200 and r.json()["added"] == 3 and r.json()["size"] == 3
    r = server.admin("POST", f"/admin/kv/{key}/members", {"remove": ["u1"], "add": ["u4"]})
    assert r.json()["removed"] == 1 and r.json()["size"] == 3
    s = unique("str")
    server.admin("PUT", f"/admin/kv/{s}", {"value": "x"})
    r = server.admin("POST", f"/admin/kv/{s}/members", {"add": ["u1"]})
    assert r.status == 409 and r.json()["error"]
    assert server.request("GET", f"/admin/kv/{s}").json()["value"] == "x"  # nothing lost


@pytest.mark.parametrize(
    "data",
    [{"add": "u1"}, {"add": [1, 2]}, {"nope": []}, {}, [], {"add": [""]}],
)
def test_kv_members_bad_bodies(server, data):
    r = server.admin("POST", f"/admin/kv/{unique('m')}/members", data)
    assert r.status == 400 and r.json()["error"] == "bad_request"


@pytest.mark.parametrize("data", [{"value": 5}, {"type": "zset", "value": "x"}, {"value": "x", "ttl": -1}, "x", {}])
def test_kv_put_bad_bodies(server, data):
    r = server.admin("PUT", f"/admin/kv/{unique('p')}", data)
    assert r.status == 400


def test_kv_bad_keys_and_namespace(server):
    assert server.request("GET", "/admin/kv/a%00b").status == 400
    assert server.request("GET", "/admin/kv/a%0d%0ab").status == 400
    assert server.request("GET", "/admin/kv/x?namespace=a:b").status == 400


def test_scripts_see_admin_kv_data(server):
    key = unique("flag")
    server.admin("PUT", f"/admin/kv/{key}", {"value": "on"})
    server.upload(FRIEND, f"def handle(req):\n    if kv.get({key!r}) == 'on':\n        return deny(5005, 'flag')\n")
    assert server.callback(FRIEND, {}).json()["errCode"] == 5005
    server.request("DELETE", f"/admin/scripts/{FRIEND}")


# --- health & metrics ---------------------------------------------------------------------

def test_healthz_without_auth(server):
    r = server.request("GET", "/healthz", token=False)
    assert r.status == 200 and r.json()["status"] == "ok"
    store = r.json()["store"]
    assert recent_iso(store["last_ok"]) and store["down_since"] is None


def test_metrics_prometheus_text(server):
    server.callback(INVITE, PAYLOAD)
    r = server.request("GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    assert re.search(rf'scriptgate_callbacks_total\{{command="{INVITE}"\}} \d', text)
    assert "scriptgate_callback_duration_seconds_bucket" in text
    assert "scriptgate_verdicts_total" in text
