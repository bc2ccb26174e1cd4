"""What the script means is what OpenIM does (issue 13, docs/openim.md): the server side.

M1 invite narrowing, M2 a deny is always a deny, M3 invalid results are visible and field
names match case-insensitively, M4/M6 nil-pointer traps, M5 msgModify content. Scripts
run in the real sandbox runtime; replies go through ``server.service.callbacks.judge`` (the
function both HTTP paths, the test endpoint and the offline tools use)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandbox.api import DENY, Budgets, RunResult
from sandbox.host.pool import WorkerPool
from sandbox.worker.runtime import compile_script, execute
from server import reply
from server.catalog import catalog
from server.config import CommandSettings, Config, ConfigError, build
from server.scripts_table import ScriptTable
from server.service.callbacks import MAX_REJECT_TEXT, Dispatcher, judge
from server.store.base import ActiveScript
from tests.fakekv import FakeKV

CAT = catalog()
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}
INVITE = "callbackBeforeInviteJoinGroupCommand"
MEMBER_INFO = "callbackBeforeSetGroupMemberInfoCommand"
MEMBERS_JOIN = "callbackBeforeMembersJoinGroupCommand"
SINGLE_CONV = "callbackBeforeCreateSingleChatConversationsCommand"
GROUP_INFO = "callbackBeforeSetGroupInfoCommand"
USER_EX = "callbackBeforeUpdateUserInfoExCommand"
MSG_MODIFY = "callbackBeforeMsgModifyCommand"
SEND_SINGLE = "callbackBeforeSendSingleMsgCommand"
FAKE_WORKER = str(Path(__file__).resolve().parent / "pool_fake_worker.py")


def go(command: str, source: str, request: dict[str, Any], settings: CommandSettings | None = None):
    """Run ``source`` on ``request`` in the sandbox runtime and judge the result."""
    result = execute(compile_script(source), request, FakeKV(), Budgets())
    return judge(CAT.get(command), settings or CommandSettings(), result, request)


def script(body: str) -> str:
    return "def handle(req):\n    " + body + "\n"


def invalid(judged, needle: str) -> None:
    """The failure policy's reply (open: continue unchanged) with the reason in ``error``."""
    body = dict(judged.reply)
    error = body.pop("error")
    assert body == ACK and judged.verdict == "error"
    assert error == {"kind": "invalid_result", "message": judged.error.message}
    assert needle in error["message"], error


def invite(ids: list[str] | None) -> dict[str, Any]:
    return {"callbackCommand": INVITE, "operationID": "op-1", "groupID": "g", "reason": "", "invitedUserIDs": ids}


# --- M1 invite narrowing ---------------------------------------------------------------------

def test_narrowing_is_a_rejection_naming_the_removed_users():
    j = go(INVITE, script("return allow(invitedUserIDs=['u1'])"), invite(["u1", "u2", "u3", "u2"]))
    assert j.verdict == DENY and [label for label, _ in j.fixes] == ["invite_narrowed"]
    assert reply.encode(j.reply) == (b'{"actionCode":0,"errCode":5001,"errMsg":"invitation refused",'
                                     b'"errDlt":"refused: u2, u3","nextCode":1}')


def test_narrowing_errcode_is_configurable_and_refused_members_mode():
    settings = CommandSettings(invite_narrowing_errcode=6001)
    j = go(INVITE, script("return allow(invitedUserIDs=[])"), invite(["u1", "u2"]), settings)
    assert j.reply == {**ACK, "nextCode": 1, "errCode": 6001, "errMsg": "invitation refused", "errDlt": "refused: u1, u2"}
    settings = CommandSettings(invite_narrowing="refused_members")
    j = go(INVITE, script("return allow(invitedUserIDs=['u2'])"), invite(["u1", "u2"]), settings)
    assert j.verdict == "modify" and j.fixes
    assert reply.encode(j.reply) == (b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,'
                                     b'"invitedUserIDs":["u2"],"refusedMembersAccount":["u1"]}')


def test_the_same_list_is_the_seed_approval_shape():
    j = go(INVITE, script("return allow(invitedUserIDs=list(reversed(req['invitedUserIDs'])))"), invite(["a", "b"]))
    assert j.verdict == "modify" and not j.fixes and j.reply == {**ACK, "invitedUserIDs": ["b", "a"]}
    j = go(INVITE, script("return allow(invitedUserIDs=[])"), invite(None))
    assert j.verdict == "modify" and j.reply == {**ACK, "invitedUserIDs": []}


def test_widening_is_invalid():
    invalid(go(INVITE, script("return allow(invitedUserIDs=req['invitedUserIDs'] + ['x'])"), invite(["a"])),
            "not invited: x")


def test_ten_thousand_invitees_the_refusal_text_stays_bounded():
    ids = [f"user{i:05d}" for i in range(10_000)]
    j = go(INVITE, script("return allow(invitedUserIDs=req['invitedUserIDs'][:1])"), invite(ids))
    dlt = j.reply["errDlt"]
    assert j.verdict == DENY and dlt.startswith("refused: user00001, user00002")
    assert len(dlt) <= MAX_REJECT_TEXT + 16 and dlt.endswith("more)")


# --- M2 a deny is always a deny ------------------------------------------------------------------

@pytest.mark.parametrize("code, shown", [("0", "0"), ("99", "99"), ("2**31", "2147483648"), ("-1", "-1"),
                                         ("2**70", "'<int outside int64>'"), ("'5001'", "'<str>'"),
                                         ("True", "'<bool>'"), ("5001.0", "'<float>'")])
def test_unusable_errcode_is_mapped_not_continued(code, shown):
    j = go(INVITE, f"def handle(req):\n    c = {code}\n    return deny(c, 'kept', 'also kept')\n", invite(["a"]))
    assert j.verdict == DENY and j.error is None
    assert j.reply == {**ACK, "nextCode": 1, "errCode": 5000, "errMsg": "kept", "errDlt": "also kept"}
    [(label, message)] = j.fixes
    assert label == "deny_errcode" and f"errCode {shown} is outside" in message


def test_fallback_is_configurable_and_validated():
    j = go(INVITE, script("return deny(len(req) * 0)"), invite(["a"]), CommandSettings(deny_errcode_fallback=7001))
    assert j.reply["errCode"] == 7001 and j.reply["nextCode"] == 1
    for bad in (99, 2**31, "5000", True):
        with pytest.raises(ConfigError, match="deny_errcode_fallback"):
            build({"defaults": {"deny_errcode_fallback": bad}})
    cfg = build({"commands": {INVITE: {"deny_errcode_fallback": 6000}}}, known_commands=set(CAT.commands))
    assert cfg.settings_for(INVITE).deny_errcode_fallback == 6000


def test_texts_are_cut_or_emptied_but_the_deny_stays():
    j = go(INVITE, script("return deny(5001, 'x' * 10000, 42)"), invite(["a"]))
    assert j.verdict == DENY and j.reply["errCode"] == 5001
    assert j.reply["errMsg"] == "x" * MAX_REJECT_TEXT and j.reply["errDlt"] == ""
    assert sorted(label for label, _ in j.fixes) == ["deny_text", "deny_text"]
    j = go(INVITE, script("return deny(5001, '\\ud800 lone')"), invite(["a"]))
    assert j.verdict == DENY and j.reply["errMsg"].endswith(" lone")
    orjson.dumps(j.reply)  # encodable


# --- M3 invalid results are visible; key case as Go's decoder -----------------------------------

@pytest.mark.parametrize("command, body, req, needle", [
    (MEMBER_INFO, "return allow(roleLevel=float(1))", {}, "roleLevel must be int32"),
    (MEMBER_INFO, "return allow(roleLevel=len(req) > -1)", {}, "roleLevel must be int32"),
    (MEMBER_INFO, "return allow(roleLevel=2**31 + len(req) * 0)", {}, "roleLevel is out of range"),
    (SINGLE_CONV, "return allow(isPinned=1 + len(req) * 0)", {}, "isPinned must be bool"),
    (MEMBERS_JOIN, "return allow(memberCallbackList=[{'userID': 'u', 'muteEndTime': 2**63 + len(req) * 0}])", {},
     "muteEndTime is out of range"),
    (MEMBERS_JOIN, "return allow(memberCallbackList=[dict(req['m'])])", {"m": {"nickname": "x"}}, "userID is required"),
    (SEND_SINGLE, "return allow(**req['f'])", {"f": {"ex": "x"}}, "cannot change any field"),
    (GROUP_INFO, "return allow(**req['f'])", {"f": {"notification": "x"}}, "'notification' cannot be changed"),
    (GROUP_INFO, "return dict(req['f'])", {"f": {"nextCode": 1}}, "'nextCode' cannot be returned"),
    (MEMBER_INFO, "return dict(req['f'])", {"f": {"nickname": "a", "nickName": "b"}}, "both set 'nickName'"),
])
def test_issue_cases_are_invalid_results(command, body, req, needle):
    invalid(go(command, script(body), req), needle)


def test_field_names_match_case_insensitively_and_go_out_spelled_as_openim_does():
    j = go(MEMBER_INFO, script("return allow(nickname='n', ROLELEVEL=60, Ex='e')"), {})
    assert j.verdict == "modify"
    assert reply.encode(j.reply) == (b'{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0,'
                                     b'"nickName":"n","roleLevel":60,"ex":"e"}')
    j = go(MEMBERS_JOIN, script("return allow(memberCallbackList=[{'USERID': 'u1', 'NickName': 'x'}])"), {})
    assert j.reply["memberCallbackList"] == [{"userID": "u1", "nickname": "x"}]
    # the Kelvin sign folds to k, as in Go
    j = go(MEMBER_INFO, script("return allow(**{'nic\\u212aName': 'x'})"), {})
    assert j.reply == {**ACK, "nickName": "x"}


def test_invalid_result_is_logged_with_the_operation_id_and_counted(caplog):
    cmd = CAT.get(GROUP_INFO)

    class Pool:
        async def run(self, **_: Any) -> RunResult:
            return RunResult("modify", {"notification": "x"})

    table = ScriptTable(None)
    table._scripts = {GROUP_INFO: ActiveScript(GROUP_INFO, 3, "sha", "src")}
    table.loaded = True
    dispatcher = Dispatcher(CAT, Config(), table, Pool(), lambda ns: None)  # type: ignore[arg-type]
    payload = {"callbackCommand": GROUP_INFO, "operationID": "op-body", "groupID": "g1"}
    with caplog.at_level(logging.WARNING, "scriptgate.dispatch"):
        outcome = asyncio.run(dispatcher.dispatch(cmd, orjson.dumps(payload), payload, "op-header"))
        asyncio.run(dispatcher.dispatch(cmd, orjson.dumps(payload)))
    assert outcome.reply["error"]["kind"] == "invalid_result" and outcome.reply["groupID"] == "g1"  # echoed
    assert outcome.error is not None and outcome.error.kind == "invalid_result"
    lines = [r.getMessage() for r in caplog.records]
    assert any("operationID=op-header" in m and "notification" in m for m in lines), lines
    assert any("operationID=op-body" in m for m in lines), lines


# --- M4/M6 nil-pointer traps, M5 content --------------------------------------------------------

def test_user_info_ex_fields_the_request_did_not_carry_are_refused():
    src = script("return allow(nickName='n', faceURL=req.get('faceURL'))")
    j = go(USER_EX, src, {"userID": "u", "nickName": "old", "faceURL": None})
    assert j.verdict == "modify" and j.reply == {**ACK, "nickName": "n", "faceURL": None}
    invalid(go(USER_EX, src, {"userID": "u", "faceURL": "f"}), "nickName cannot be set here")
    invalid(go(USER_EX, script("return allow(**req['f'])"), {"userID": "u", "f": {"ex": "x"}}), "ex cannot be set here")
    assert go(USER_EX, script("return allow(ex=None)"), {"userID": "u"}).verdict == "modify"


def test_msg_modify_offline_push_info_is_never_sent():
    invalid(go(MSG_MODIFY, script("return allow(offlinePushInfo=dict(req['p']))"), {"p": {"title": "t"}}),
            "offlinePushInfo cannot be set here")
    assert go(MSG_MODIFY, script("return allow(offlinePushInfo=None, ex='x')"), {}).verdict == "modify"


@pytest.mark.parametrize("content, ok", [
    ('{"content":"hi"}', True), ("{}", True), ("hi", False), ("[1]", False), ('"text"', False), ("null", False),
    ("1", False), ('{"a": NaN}', False), ('{"a":1', False), ("", False),
])
def test_msg_modify_content_must_be_a_json_object(content, ok):
    j = go(MSG_MODIFY, script("return allow(content=req['c'])"), {"c": content})
    if ok:
        assert j.verdict == "modify" and j.reply["content"] == content
    else:
        invalid(j, "content must be")


def test_every_trap_in_the_catalogue_names_a_mutable_field():
    traps = {(name, t.field, t.when) for name, c in CAT.commands.items() for t in c.traps}
    assert traps == {(USER_EX, "nickName", "request_null"), (USER_EX, "faceURL", "request_null"),
                     (USER_EX, "ex", "request_null"), (MSG_MODIFY, "offlinePushInfo", "always")}


# --- the two OpenIM lines ------------------------------------------------------------------

def test_lines_in_the_catalogue_match_openim_v3_8_3_patch_16():
    main_only = {n for n, c in CAT.commands.items() if c.openim_lines == ("main",)}
    assert main_only == {
        "callbackBeforeCreateSingleChatConversationsCommand", "callbackAfterCreateSingleChatConversationsCommand",
        "callbackBeforeCreateGroupChatConversationsCommand", "callbackAfterCreateGroupChatConversationsCommand",
        "callbackAfterMsgSaveDBCommand",
    }
    assert all(c.openim_lines == ("main", "v3.8") for n, c in CAT.commands.items() if n not in main_only)
    assert "Text" in CAT.get(MSG_MODIFY).line_notes["v3.8"]
    assert "#3794" in CAT.get("callbackAfterJoinGroupCommand").line_notes["main"]


def test_openim_setting_is_validated():
    assert build({"openim": "v3.8"}).openim == "v3.8"
    assert Config().openim == "main"
    with pytest.raises(ConfigError, match="openim must be one of"):
        build({"openim": "v3.7"})
    with pytest.raises(ConfigError, match="invite_narrowing must be one of"):
        build({"defaults": {"invite_narrowing": "drop"}})


# --- M2 through a hostile worker: the host's re-check ------------------------------------------

HOSTILE = {
    "deny_errcode_low": {"errCode": 5000, "errMsg": "too low", "errDlt": "d", "nextCode": 1},
    "deny_errcode_zero": {"errCode": 5000, "errMsg": "zero", "errDlt": "", "nextCode": 1},
    "deny_errcode_high": {"errCode": 5000, "errMsg": "too high", "errDlt": "", "nextCode": 1},
    "deny_errcode_text": {"errCode": 5000, "errMsg": "text code", "errDlt": "", "nextCode": 1},
    "deny_errcode_missing": {"errCode": 5000, "errMsg": "no code", "errDlt": "", "nextCode": 1},
    "deny_long_errmsg": {"errCode": 5001, "errMsg": "m" * MAX_REJECT_TEXT, "errDlt": "d" * MAX_REJECT_TEXT,
                         "nextCode": 1},
    "deny_errmsg_types": {"errCode": 5001, "errMsg": "", "errDlt": "", "nextCode": 1},
    "modify_common_fields": None,  # invalid_result: the policy reply with an error object
    "modify_wrong_type": None,
    "bad_verdict": None,
    "bad_result": None,
}


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_hostile_worker_results_still_give_a_valid_openim_reply(mode):
    async def main() -> dict[str, Any]:
        pool = WorkerPool(worker_cmd=[sys.executable, FAKE_WORKER, mode], size=1, start_timeout=5.0)
        async with pool:
            table = ScriptTable(None)
            table._scripts = {INVITE: ActiveScript(INVITE, 1, "fake", "def handle(req):\n    return None\n")}
            table.loaded = True
            dispatcher = Dispatcher(CAT, Config(), table, pool, lambda ns: None)  # type: ignore[arg-type]
            outcome = await dispatcher.dispatch(CAT.get(INVITE), orjson.dumps(invite(["u1"])))
            return orjson.loads(reply.encode(outcome.reply))

    got = asyncio.run(main())
    for key in ("actionCode", "errCode", "nextCode"):
        assert type(got[key]) is int and -(2**31) <= got[key] < 2**31
    assert type(got["errMsg"]) is str and type(got["errDlt"]) is str
    want = HOSTILE[mode]
    if want is not None:
        assert got == {"actionCode": 0, **want}
    else:
        error = got.pop("error")
        assert got == ACK and error["kind"] == "invalid_result"


def test_docs_have_a_table_for_every_command():
    text = (Path(__file__).resolve().parents[1] / "docs" / "openim.md").read_text()
    for name, command in CAT.commands.items():
        heading = f"#### `{name}`\n"
        assert heading in text, name
        table = text.split(heading, 1)[1].split("####", 1)[0]
        lines = "main and v3.8" if command.openim_lines == ("main", "v3.8") else "main only"
        assert f"| Sent by | {lines}" in table, name


def test_docs_at_a_glance_table_has_one_row_per_command():
    text = (Path(__file__).resolve().parents[1] / "docs" / "openim.md").read_text()
    glance = text.split("## At a glance\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in glance.splitlines() if line.startswith("| [`")]
    named = [line.split("`")[1] for line in rows]
    assert sorted(named) == sorted(CAT.commands), "one row per catalogue command"
    invite = next(line for line in rows if "callbackBeforeInviteJoinGroupCommand" in line)
    assert "narrow" in invite and "rejection" in invite  # M1: narrowing is not what OpenIM applies
