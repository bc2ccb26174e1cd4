"""The callback endpoint end to end: a real ``scriptgate serve`` process, requests encoded
and sent the way OpenIM's Go client sends them, replies decoded the way OpenIM decodes them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server.catalog import TypeSpec, catalog
from tests.gojson import go_encode, go_headers
from tests.server_proc import start_server
from tests.timing import SLACK_S

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}
INVITE = "callbackBeforeInviteJoinGroupCommand"
MEMBER_INFO = "callbackBeforeSetGroupMemberInfoCommand"

SEED_INVITE = {
    "callbackCommand": INVITE,
    "operationID": "1646445464564",
    "groupID": "12345",
    "reason": "friend",
    "invitedUserIDs": ["user1", "user2"],
}
SEED_MEMBER_INFO = {
    "callbackCommand": MEMBER_INFO,
    "groupID": "12345",
    "userID": "user789",
    "nickName": "user",
    "faceURL": "http://example.com/path/to/face/image.png",
    "roleLevel": 20,
    "ex": "Extra data",
}


def openim_parse(body: bytes) -> tuple[str, dict]:
    """Decode a reply as OpenIM's CommonCallbackResp.Parse does (v3.7+)."""
    data = json.loads(body)
    assert isinstance(data, dict)
    for key in ("actionCode", "errCode", "nextCode"):
        assert type(data[key]) is int and -(2**31) <= data[key] < 2**31, (key, data)
    for key in ("errMsg", "errDlt"):
        assert type(data[key]) is str
    if data["actionCode"] == 0 and data["nextCode"] == 1:
        return "reject", data
    return "continue", data


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture
def clean(server):
    yield server
    for command in list(catalog().commands):
        if server.request("GET", f"/admin/scripts/{command}").status == 200:
            server.request("DELETE", f"/admin/scripts/{command}")


def sample(spec: TypeSpec):
    """A valid, non-null value of a reply field's type."""
    if spec.kind == "string":
        return "changed"
    if spec.kind in ("int32", "int64", "int", "uint32"):
        return 7
    if spec.kind == "bool":
        return True
    if spec.kind == "map":
        return {"history": True}
    if spec.kind == "list":
        return [sample(spec.item)] if spec.item else []
    if spec.kind == "object":
        return {name: sample(f) for name, f in spec.fields.items()}
    raise AssertionError(spec.kind)


# --- seeds --------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["", "/callbackExample"])
def test_seed_invite_without_script_continues(server, base):
    r = server.callback(INVITE, SEED_INVITE, base=base)
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == ACK


@pytest.mark.parametrize("base", ["", "/callbackExample"])
def test_seed_invite_with_blocklist_script(clean, base):
    server = clean
    src = (Path(__file__).resolve().parents[1] / "scripts" / f"{INVITE}.py").read_text()
    assert server.upload(INVITE, src).status == 201
    key = "blocklist:users"
    server.admin("DELETE", f"/admin/kv/{key}")
    # nobody blocked: continue
    assert server.callback(INVITE, SEED_INVITE, base=base).json() == ACK
    # one blocked invitee refuses the invitation (OpenIM ignores a narrowed invitedUserIDs)
    assert server.admin("POST", f"/admin/kv/{key}/members", {"add": ["user2"]}).status == 200
    kind, data = openim_parse(server.callback(INVITE, SEED_INVITE, base=base).body)
    assert kind == "reject" and data["errCode"] == 5001 and data["errDlt"] == "blocked: user2"
    # full refusal
    server.admin("POST", f"/admin/kv/{key}/members", {"add": ["user1"]})
    kind, data = openim_parse(server.callback(INVITE, SEED_INVITE, base=base).body)
    assert kind == "reject" and data["errCode"] == 5001 and data["errMsg"] == "invitation refused"
    assert "user1" in data["errDlt"] and "user2" in data["errDlt"]
    server.admin("DELETE", f"/admin/kv/{key}")


def test_seed_invite_approval_response_and_narrowing(clean):
    server = clean
    # echoing the list: the seed's "Approval Response", byte for byte
    server.upload(INVITE, "def handle(req):\n    return allow(invitedUserIDs=req['invitedUserIDs'])\n")
    r = server.callback(INVITE, SEED_INVITE)
    assert r.body == b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,"invitedUserIDs":["user1","user2"]}'
    # narrowing: OpenIM would add user2 anyway, so ScriptGate rejects the invitation
    server.upload(INVITE, "def handle(req):\n    return allow(invitedUserIDs=req['invitedUserIDs'][:1])\n")
    kind, data = openim_parse(server.callback(INVITE, SEED_INVITE).body)
    assert (kind, data) == ("reject", {"actionCode": 0, "errCode": 5001, "errMsg": "invitation refused",
                                       "errDlt": "refused: user2", "nextCode": 1})


@pytest.mark.parametrize("base", ["", "/callbackExample"])
def test_seed_member_info_examples(clean, base):
    server = clean
    assert server.callback(MEMBER_INFO, SEED_MEMBER_INFO, base=base).json() == ACK
    script = (
        "def handle(req):\n"
        "    return allow(ex='Some extra data', nickName=req['nickName'], faceURL=req['faceURL'],"
        " roleLevel=req['roleLevel'])\n"
    )
    assert server.upload(MEMBER_INFO, script).status == 201
    r = server.callback(MEMBER_INFO, SEED_MEMBER_INFO, base=base)
    assert r.json() == {
        **ACK,
        "ex": "Some extra data",
        "nickName": "user",
        "faceURL": "http://example.com/path/to/face/image.png",
        "roleLevel": 20,
    }


def test_seed_query_string_and_doc_url_form(server):
    r = server.request("POST", f"/{INVITE}?contenttype=json", go_encode(SEED_INVITE), headers=go_headers(), token=False)
    assert r.json() == ACK
    r = server.request("POST", f"/callbackExample/{INVITE}?key=eyJzZW5kSUQiOiIxIn0%3D", go_encode(SEED_INVITE),
                       headers=go_headers(), token=False)
    assert r.json() == ACK
    # a trailing slash in webhooks.yml's url gives a double slash
    r = server.request("POST", f"/callbackExample//{INVITE}", go_encode(SEED_INVITE), headers=go_headers(), token=False)
    assert r.json() == ACK


@pytest.mark.skipif(not SEEDS.exists(), reason="shared/seeds not beside the checkout")
def test_seed_documents_examples_verbatim(server):
    """The request JSON blocks of both seed pages, as written, are accepted."""
    for page in sorted(SEEDS.glob("*.txt")):
        text = page.read_text()
        start = text.index("{", text.index("Request Package Example") if "Request Package Example" in text
                           else text.index("Example Request Package"))
        body = text[start:text.index("}", start) + 1]
        command = json.loads(body)["callbackCommand"]
        r = server.request("POST", f"/callbackExample/{command}?contenttype=json", body.encode(), token=False)
        assert r.status == 200 and r.json() == ACK


def test_go_encoding_quirks(clean):
    server = clean
    server.upload(
        "callbackBeforeSendSingleMsgCommand",
        "def handle(req):\n"
        "    if '<script>' in req['content'] and req['atUserList'] is None:\n"
        "        return deny(5300, 'html', req['content'])\n",
    )
    payload = {"sendID": "u1", "recvID": "u2", "content": '{"content":"<script>&"}', "atUserList": None,
               "seq": 0, "contentType": 101, "sessionType": 1}
    kind, data = openim_parse(server.callback("callbackBeforeSendSingleMsgCommand", payload).body)
    assert kind == "reject" and data["errDlt"] == '{"content":"<script>&"}'


# --- the whole catalogue ------------------------------------------------------------------

COMMANDS = sorted(catalog().commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_without_script(server, command):
    r = server.callback(command, {"callbackCommand": command})
    assert r.status == 200 and r.json() == ACK


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_with_rewriting_and_denying_scripts(clean, command):
    server = clean
    cmd = catalog().get(command)
    body = {"callbackCommand": command, "operationID": "op"}
    if cmd.mutable:
        # a field a reply can set without a nil-pointer trap (M4/M6: never settable ones are refused)
        never = {t.field for t in cmd.traps if t.when == "always" or cmd.request.get(t.field, TypeSpec("null")).kind == "null"}
        field, spec = sorted((n, s) for n, s in cmd.mutable.items() if n not in never)[0]
        value = sample(spec)
        if any(t.field == field for t in cmd.traps) or cmd.invite_narrowing:
            body[field] = value  # the request carries it: OpenIM can apply it (docs/openim.md, M1/M4)
        assert server.upload(command, f"def handle(req):\n    return allow({field}={value!r})\n").status == 201
        r = server.callback(command, body)
        kind, data = openim_parse(r.body)
        if cmd.is_before:
            assert kind == "continue" and data[field] == value
        else:
            assert r.json() == ACK
    assert server.upload(command, "def handle(req):\n    return deny(5999, 'no', 'because')\n").status == 201
    kind, data = openim_parse(server.callback(command, body).body)
    if cmd.is_before:
        assert (kind, data["errCode"], data["errMsg"], data["errDlt"]) == ("reject", 5999, "no", "because")
    else:
        assert data == ACK  # after callbacks: script ran, reply is the plain ack


def test_unmutable_field_is_a_script_error_and_policy_applies(clean):
    server = clean

    def invalid(message_part: str) -> None:
        data = server.callback(INVITE, SEED_INVITE).json()
        error = data.pop("error")
        assert data == ACK  # open policy: continue unchanged, and the reply says why
        assert error["kind"] == "invalid_result" and message_part in error["message"], error

    # values computed at run time: the upload check cannot see them
    server.upload(INVITE, "def handle(req):\n    f = 'group' + 'ID'\n    return allow(**{f: 'other'})\n")
    invalid("'groupID' cannot be changed")
    server.upload(INVITE, "def handle(req):\n    return allow(invitedUserIDs=req['groupID'])\n")
    invalid("invitedUserIDs must be")
    server.upload(INVITE, "def handle(req):\n    return allow(invitedUserIDs=req['invitedUserIDs'] + ['x'])\n")
    invalid("not invited: x")
    # a deny is always a deny: an unusable errCode is mapped to deny_errcode_fallback
    server.upload(INVITE, "def handle(req):\n    return deny(len(req) * 0 + 99, 'too low')\n")
    kind, data = openim_parse(server.callback(INVITE, SEED_INVITE).body)
    assert (kind, data["errCode"], data["errMsg"]) == ("reject", 5000, "too low")


def test_script_exception_open_policy(clean):
    server = clean
    server.upload(INVITE, "def handle(req):\n    return 1 / 0\n")
    assert server.callback(INVITE, SEED_INVITE).json() == ACK


def test_deadline_is_met_with_an_endless_script(clean):
    server = clean
    server.upload(INVITE, "def handle(req):\n    while True:\n        pass\n")
    started = time.monotonic()
    r = server.callback(INVITE, SEED_INVITE)
    elapsed = time.monotonic() - started
    assert r.json() == ACK
    assert elapsed < 2.0 + SLACK_S  # default deadline 2 s (wall budget 1 s); the script never ends
    # the server still answers normally afterwards
    server.upload(INVITE, "def handle(req):\n    return deny(5001, 'x')\n")
    assert openim_parse(server.callback(INVITE, SEED_INVITE).body)[0] == "reject"


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (b"null", "invalid_body"),
        (b'{"invitedUserIDs": "user1"}', "invalid_field"),
        (b'{"groupID": 12345}', "invalid_field"),
        (b'{"reason": "\xff\xfe"}', "invalid_utf8"),
    ],
)
def test_bad_bodies_get_a_clear_json_error(server, raw, code):
    r = server.request("POST", f"/{INVITE}", raw, headers=go_headers(), token=False)
    assert r.status == 200  # OpenIM ignores the status; the body says what went wrong
    data = r.json()
    assert data["error"]["code"] == code and data["error"]["message"]
    assert openim_parse(r.body)[0] == "continue"  # still a well-formed OpenIM reply


def test_unknown_command_and_methods(server):
    r = server.request("POST", "/callbackNoSuchCommand", b"{}", token=False)
    assert r.status == 200 and r.json()["error"]["code"] == "unknown_command"
    r = server.request("GET", f"/{INVITE}", token=False)
    assert r.status == 200 and r.json()["error"]["code"] == "method_not_allowed"
    r = server.request("POST", "/", b"{}", token=False)
    assert r.status == 200 and r.json()["error"]["code"] == "unknown_command"


def test_huge_body_is_413_with_json(server):
    big = b'{"reason":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    r = server.request("POST", f"/{INVITE}", big, token=False)
    assert r.status == 200 and r.json()["error"]["code"] == "payload_too_large"
    # and the server is fine afterwards
    assert server.callback(INVITE, SEED_INVITE).status == 200


# --- inbound protection -------------------------------------------------------------------

def test_secret_path_prefix_and_cidr(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('path_prefix = "hook-7f3a9c"\nallow_cidrs = ["127.0.0.0/8"]\n')
    srv = start_server("--config", str(cfg))
    try:
        assert srv.callback(INVITE, SEED_INVITE, base="/hook-7f3a9c").json() == ACK
        assert srv.callback(INVITE, SEED_INVITE, base="/hook-7f3a9c/callbackExample").json() == ACK
        assert srv.callback(INVITE, SEED_INVITE).json()["error"]["code"] == "not_found"
        assert srv.callback(INVITE, SEED_INVITE, base="/hook-wrong").json()["error"]["code"] == "not_found"
    finally:
        srv.stop()
    cfg.write_text('allow_cidrs = ["10.0.0.0/8"]\n')
    srv = start_server("--config", str(cfg))
    try:
        r = srv.callback(INVITE, SEED_INVITE)
        assert r.status == 200 and r.json()["error"]["code"] == "forbidden"
        assert srv.request("GET", "/healthz").status == 200  # admin is not restricted by allow_cidrs
    finally:
        srv.stop()


def test_closed_failure_policy(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f"[commands.{INVITE}]\nfailure_policy = 'closed'\nreject_errcode = 5999\nreject_errmsg = 'checks unavailable'\n"
    )
    srv = start_server("--config", str(cfg))
    try:
        srv.upload(INVITE, "def handle(req):\n    raise ValueError('boom')\n")
        kind, data = openim_parse(srv.callback(INVITE, SEED_INVITE).body)
        assert (kind, data["errCode"], data["errMsg"]) == ("reject", 5999, "checks unavailable")
        # a bad request on a closed command is refused too, with the error attached
        r = srv.request("POST", f"/{INVITE}", b"{oops", token=False)
        kind, data = openim_parse(r.body)
        assert kind == "reject" and data["error"]["code"] == "invalid_json"
        # other commands keep the open default
        srv.upload("callbackBeforeAddFriendCommand", "def handle(req):\n    raise ValueError('boom')\n")
        assert srv.callback("callbackBeforeAddFriendCommand", {}).json() == ACK
    finally:
        srv.stop()


@pytest.mark.parametrize("command", ["callbackBeforeSetGroupInfoCommand", "callbackBeforeSetGroupInfoExCommand"])
def test_set_group_info_continue_replies_echo_always_applied_fields(clean, command):
    """OpenIM applies groupID (and, for the Ex variant, every field) from the reply even when
    it is absent, so continue replies carry the request's values."""
    server = clean
    req = {"callbackCommand": command, "operationID": "", "groupID": "g42", "groupName": "Team",
           "notification": "n", "introduction": "", "faceURL": "", "ex": None,
           "needVerification": None, "lookMemberInfo": None, "applyMemberFriend": None}
    if command == "callbackBeforeSetGroupInfoCommand":  # plain values there, never null
        req.update(ex="", needVerification=0, lookMemberInfo=0, applyMemberFriend=0)
    data = server.callback(command, req).json()  # no script
    assert data["groupID"] == "g42" and data["groupName"] == "Team" and "notification" not in data
    server.upload(command, "def handle(req):\n    return allow(groupName='Renamed')\n")
    data = server.callback(command, req).json()
    assert data["groupID"] == "g42" and data["groupName"] == "Renamed"
    server.upload(command, "def handle(req):\n    raise ValueError()\n")  # open policy
    assert server.callback(command, req).json()["groupID"] == "g42"
    server.upload(command, "def handle(req):\n    return deny(5001, 'no')\n")
    assert "groupID" not in server.callback(command, req).json()  # a rejection applies nothing
