"""Offline warnings (``server.lint``): fields a command cannot change and the OpenIM traps
of PROTOCOL.md §9.5. Each trap has a script that trips it and a correct one that must not."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import lint
from server.catalog import catalog

ROOT = Path(__file__).resolve().parents[1]
CAT = catalog()


def warn(command: str, source: str) -> list[str]:
    """Every finding's message, errors and warnings."""
    cmd = CAT.get(command)
    assert cmd is not None
    return [w.message for w in lint.check(cmd, source)]


def errors(command: str, source: str, openim: str = "main") -> list[str]:
    cmd = CAT.get(command)
    assert cmd is not None
    return [w.message for w in lint.errors(cmd, source, openim)]


def warnings(command: str, source: str, openim: str = "main") -> list[str]:
    cmd = CAT.get(command)
    assert cmd is not None
    return [w.message for w in lint.warnings(cmd, source, openim)]


def only(command: str, source: str, needle: str) -> list[str]:
    return [m for m in warn(command, source) if needle in m]


# --- fields the command cannot change ---------------------------------------------------

def test_field_not_mutable_is_named_with_the_allowed_ones():
    msgs = warn("callbackBeforeInviteJoinGroupCommand", "def handle(req):\n    return allow(groupID='x')\n")
    assert any("cannot change 'groupID'" in m and "invitedUserIDs" in m for m in msgs)


def test_reject_only_command_says_so():
    msgs = warn("callbackBeforeSendSingleMsgCommand", "def handle(req):\n    return allow(content='x')\n")
    assert any("cannot change any field (its reply can only reject or continue)" in m for m in msgs)


def test_returned_dict_literal_in_handle_is_checked_but_helper_dicts_are_not():
    src = (
        "def helper():\n    return {'anything': 1}\n\n"
        "def handle(req):\n    helper()\n    return {'remark': 'x', 'nope': 1}\n"
    )
    msgs = warn("callbackBeforeSetFriendRemarkCommand", src)
    assert any("cannot change 'nope'" in m for m in msgs)
    assert not any("anything" in m for m in msgs)


def test_renamed_reply_fields_get_a_hint():
    msgs = warn("callbackBeforeMsgModifyCommand", "def handle(req):\n    return allow(faceURL='x', atUserList=[])\n")
    assert any("'senderFaceURL'" in m for m in msgs)
    assert any("'atUserIDList'" in m for m in msgs)


def test_positions_are_line_and_col_of_the_field_value():
    cmd = CAT.get("callbackBeforeInviteJoinGroupCommand")
    ws = lint.check(cmd, "def handle(req):\n    return allow(\n        nope=1)\n")
    assert [(w.line, w.col) for w in ws] == [(3, 13)]


def test_unparsable_source_gives_no_warnings():
    assert warn("callbackBeforeInviteJoinGroupCommand", "def handle(req:\n") == []


# --- after callbacks ---------------------------------------------------------------------

def test_after_callback_fields_and_deny_are_ignored():
    src = "def handle(req):\n    if req['x']:\n        return deny(5001, 'no')\n    return allow(x=1)\n"
    msgs = warn("callbackAfterSendSingleMsgCommand", src)
    assert any("deny() has no effect" in m for m in msgs)
    assert any("returned fields are ignored (x)" in m for m in msgs)
    assert warn("callbackAfterSendSingleMsgCommand", "def handle(req):\n    kv.incr('n')\n") == []


# --- deny errCode ------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["99", "0", "-5", "2147483648", "'5001'", "5001.0"])
def test_deny_errcode_out_of_range_or_not_int(code):
    msgs = warn("callbackBeforeAddFriendCommand", f"def handle(req):\n    return deny({code}, 'x')\n")
    assert any("errCode" in m for m in msgs), msgs


@pytest.mark.parametrize("call", ["deny(100)", "deny(5001, 'x', 'y')", "deny(errCode=2147483647)", "deny(code)"])
def test_deny_errcode_fine_or_unknown(call):
    assert warn("callbackBeforeAddFriendCommand", f"code = 5001\ndef handle(req):\n    return {call}\n") == []


def test_deny_without_errcode():
    assert only("callbackBeforeAddFriendCommand", "def handle(req):\n    return deny()\n", "needs an errCode")


# --- set group info: the server echoes groupID, scripts need not ----------------------------

@pytest.mark.parametrize("command", ["callbackBeforeSetGroupInfoCommand", "callbackBeforeSetGroupInfoExCommand"])
@pytest.mark.parametrize(
    "body",
    ["return allow(groupName='x')", "return allow()", "return None", "log('x')", "return {'groupName': 'x'}"],
)
def test_set_group_info_needs_no_echo(command, body):
    assert not [m for m in warn(command, f"def handle(req):\n    {body}\n") if "groupID" in m], body


def test_set_group_info_constant_group_id_is_flagged():
    assert only("callbackBeforeSetGroupInfoCommand", "def handle(req):\n    return allow(groupID='g1')\n", "groupID")
    assert warn("callbackBeforeSetGroupInfoCommand", "def handle(req):\n    return allow(groupID=req['groupID'])\n") == []


# --- update user info ex -----------------------------------------------------------------

def test_update_user_info_ex_never_ex():
    assert only("callbackBeforeUpdateUserInfoExCommand", "def handle(req):\n    return allow(ex='x')\n", "never return ex")
    assert warn("callbackBeforeUpdateUserInfoExCommand", "def handle(req):\n    return allow(ex=None)\n") == []


def test_update_user_info_ex_only_non_null_request_fields():
    unguarded = "def handle(req):\n    return allow(nickName=req['nickName'].strip())\n"
    assert only("callbackBeforeUpdateUserInfoExCommand", unguarded, "not null")
    guarded = (
        "def handle(req):\n"
        "    if req.get('nickName') is not None:\n"
        "        return allow(nickName=req['nickName'].strip())\n"
    )
    assert warn("callbackBeforeUpdateUserInfoExCommand", guarded) == []


# --- msg modify --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value,bad",
    [
        ("'hello'", True),
        ("'[1, 2]'", True),
        ("'{\"content\": \"hi\"}'", False),
        ("json.dumps({'content': 'hi'})", False),
        ("json.dumps(['hi'])", True),
        ("f'{{\"content\": \"{x}\"}}'", True),
        ("'{\"a\":' + x + '}'", True),
        ("new_content", False),
    ],
)
def test_msg_modify_content_must_be_a_json_object(value, bad):
    src = f"def handle(req):\n    x = 'a'\n    new_content = req['content']\n    return allow(content={value})\n"
    assert bool(only("callbackBeforeMsgModifyCommand", src, "content")) is bad, warn("callbackBeforeMsgModifyCommand", src)


def test_msg_modify_offline_push_info_is_a_trap():
    src = "def handle(req):\n    return allow(offlinePushInfo={'title': 't', 'desc': '', 'ex': ''})\n"
    assert only("callbackBeforeMsgModifyCommand", src, "offlinePushInfo")


# --- members join ------------------------------------------------------------------------

def test_member_callback_list_entries_need_user_id():
    bad = "def handle(req):\n    return allow(memberCallbackList=[{'nickname': 'x'} for m in req['memberList']])\n"
    assert only("callbackBeforeMembersJoinGroupCommand", bad, "userID")
    bad2 = "def handle(req):\n    return allow(memberCallbackList=[dict(ex='1')])\n"
    assert only("callbackBeforeMembersJoinGroupCommand", bad2, "userID")
    good = (
        "def handle(req):\n"
        "    return allow(memberCallbackList=[{'userID': m['userID'], 'ex': 'vip'} for m in req['memberList']])\n"
    )
    assert warn("callbackBeforeMembersJoinGroupCommand", good) == []


# --- invite / notes --------------------------------------------------------------------------

def test_invite_narrowing_warns_that_it_becomes_a_rejection():
    msgs = only("callbackBeforeInviteJoinGroupCommand", "def handle(req):\n    return allow(invitedUserIDs=[])\n", "ignores")
    assert msgs and "rejection" in msgs[0] and "deny(" in msgs[0]
    echo = "def handle(req):\n    return allow(invitedUserIDs=req['invitedUserIDs'])\n"
    assert warn("callbackBeforeInviteJoinGroupCommand", echo) == []


def test_empty_value_that_openim_treats_as_no_change():
    msgs = only("callbackBeforeSetFriendRemarkCommand", "def handle(req):\n    return allow(remark='')\n", "empty value")
    assert msgs
    assert warn("callbackBeforeSetFriendRemarkCommand", "def handle(req):\n    return allow(remark='hi')\n") == []


def test_warnings_are_deduplicated_and_sorted():
    cmd = CAT.get("callbackBeforeAddFriendCommand")
    ws = lint.check(cmd, "def handle(req):\n    a = deny(1)\n    return deny(2)\n")
    assert [w.line for w in ws] == [2, 3]


# --- errors refuse the upload (M2, M3, M4-M6) ------------------------------------------------

@pytest.mark.parametrize("command, body, needle", [
    ("callbackBeforeSetGroupMemberInfoCommand", "return allow(roleLevel=1.0)", "roleLevel must be int32"),
    ("callbackBeforeSetGroupMemberInfoCommand", "return allow(roleLevel=True)", "roleLevel must be int32"),
    ("callbackBeforeSetGroupMemberInfoCommand", "return allow(roleLevel=2**31)", "roleLevel is out of range"),
    ("callbackBeforeCreateSingleChatConversationsCommand", "return allow(isPinned=1)", "isPinned must be bool"),
    ("callbackBeforeMembersJoinGroupCommand", "return allow(memberCallbackList=[{'userID': 'u', 'muteEndTime': 2**63}])",
     "muteEndTime is out of range"),
    ("callbackBeforeMembersJoinGroupCommand", "return allow(memberCallbackList=[{'nickname': 'x'}])", "needs userID"),
    ("callbackBeforeSendSingleMsgCommand", "return allow(ex='x')", "cannot change any field"),
    ("callbackBeforeSetGroupInfoCommand", "return allow(notification='x')", "cannot change 'notification'"),
    ("callbackBeforeSetGroupInfoCommand", "return {'nextCode': 1}", "'nextCode' cannot be returned"),
    ("callbackBeforeSetGroupInfoCommand", "return dict(nextcode=1, errCode=5000)", "'nextcode' cannot be returned"),
    ("callbackBeforeAddFriendCommand", "return deny(99, 'x')", "errCode 99 is outside"),
    ("callbackBeforeAddFriendCommand", "return deny(2**31, 'x')", "errCode 2147483648 is outside"),
    ("callbackBeforeUpdateUserInfoExCommand", "return allow(ex='x')", "never return ex"),
    ("callbackBeforeMsgModifyCommand", "return allow(offlinePushInfo={'title': 't'})", "never return offlinePushInfo"),
    ("callbackBeforeMsgModifyCommand", "return allow(content='plain text')", "content must be JSON"),
    ("callbackBeforeSetGroupMemberInfoCommand", "return allow(nickNmae='x')", "did you mean nickName?"),
])
def test_errors_that_refuse_the_upload(command, body, needle):
    found = errors(command, f"def handle(req):\n    {body}\n")
    assert any(needle in m for m in found), found


def test_field_name_case_is_a_warning_with_the_catalogue_spelling():
    src = "def handle(req):\n    return allow(nickname='x')\n"
    assert errors("callbackBeforeSetGroupMemberInfoCommand", src) == []
    [msg] = warnings("callbackBeforeSetGroupMemberInfoCommand", src)
    assert "did you mean nickName?" in msg and "sent as nickName" in msg


def test_error_position_is_the_value():
    cmd = CAT.get("callbackBeforeSetGroupMemberInfoCommand")
    [f] = lint.errors(cmd, "def handle(req):\n    x = 1\n    return allow(ex='a', roleLevel=1.0)\n")
    assert (f.line, f.col, f.severity) == (3, 35, "error")


def test_values_computed_at_run_time_are_not_errors():
    src = "def handle(req):\n    return allow(roleLevel=req['roleLevel'], ex=str(req['ex']))\n"
    assert errors("callbackBeforeSetGroupMemberInfoCommand", src) == []


# --- the OpenIM line ---------------------------------------------------------------------------

def test_command_the_line_never_sends():
    src = "def handle(req):\n    return allow(isPinned=True)\n"
    cmd = "callbackBeforeCreateSingleChatConversationsCommand"
    assert warnings(cmd, src, "main") == []
    [msg] = warnings(cmd, src, "v3.8")
    assert "OpenIM v3.8 never sends" in msg
    assert warnings("callbackAfterMsgSaveDBCommand", "def handle(req):\n    log('x')\n", "v3.8")


@pytest.mark.parametrize("test", ["req['contentType'] == 102", "req.get('contentType') in (101, 102)",
                                  "102 == req['contentType']"])
def test_msg_modify_for_other_content_types(test):
    src = f"def handle(req):\n    if {test}:\n        return allow(ex='x')\n"
    for line in ("main", "v3.8"):
        [msg] = warnings("callbackBeforeMsgModifyCommand", src, line)
        assert "only for Text" in msg and "#3739" in msg and "102" in msg
    assert warnings("callbackBeforeMsgModifyCommand", "def handle(req):\n    if req['contentType'] == 101:\n"
                    "        return allow(ex='x')\n") == []


# --- the ready scripts are clean -------------------------------------------------------------

@pytest.mark.parametrize("openim", ["main", "v3.8"])
@pytest.mark.parametrize("path", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.stem)
def test_ready_scripts_have_no_findings(path, openim):
    cmd = CAT.get(path.stem)
    assert lint.check(cmd, path.read_text(), openim) == []
