"""The ready scripts in scripts/, run in the sandbox runtime against realistic payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.api import Budgets
from sandbox.policy import check_source
from sandbox.worker.runtime import compile_script, execute
from server.catalog import catalog
from server.config import CommandSettings
from server.service.callbacks import verdict_reply
from tests.fakekv import FakeKV

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run(command: str, payload: dict, kv: FakeKV):
    script = compile_script((SCRIPTS / f"{command}.py").read_text())
    result = execute(script, payload, kv, Budgets())
    cmd = catalog().get(command)
    reply, verdict, error = verdict_reply(cmd, CommandSettings(), result, payload)
    assert error is None, (error, result.logs)
    return verdict, reply, result


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_every_ready_script_passes_the_policy_and_is_named_after_a_command(path):
    assert path.stem in catalog()
    assert check_source(path.read_text()) == []


INVITE = "callbackBeforeInviteJoinGroupCommand"


def invite(users):
    return {"callbackCommand": INVITE, "operationID": "1646445464564", "groupID": "12345",
            "reason": "friend", "invitedUserIDs": users}


def test_invite_blocklist_nobody_blocked_continues():
    verdict, reply, _ = run(INVITE, invite(["user1", "user2"]), FakeKV())
    assert verdict == "allow" and reply["nextCode"] == 0 and "invitedUserIDs" not in reply


def test_invite_blocklist_partial_and_full_refusal():
    # OpenIM ignores invitedUserIDs in the reply: one blocked invitee refuses the invitation.
    kv = FakeKV({"blocklist:users": {"user2"}})
    verdict, reply, result = run(INVITE, invite(["user1", "user2", "user3"]), kv)
    assert verdict == "deny" and reply["nextCode"] == 1 and reply["errCode"] == 5001
    assert reply["errMsg"] == "invitation refused" and reply["errDlt"] == "blocked: user2"
    assert result.logs and "user2" in result.logs[0]
    kv.data["blocklist:users"] = {"user1", "user2"}
    verdict, reply, _ = run(INVITE, invite(["user1", "user2"]), kv)
    assert verdict == "deny" and reply["nextCode"] == 1 and reply["errCode"] == 5001
    assert reply["errDlt"] == "blocked: user1, user2"


def test_invite_blocklist_large_invitation_uses_few_kv_calls():
    users = [f"u{i}" for i in range(1200)]
    kv = FakeKV({"blocklist:users": {"u5", "u1100"}})
    verdict, reply, result = run(INVITE, invite(users), kv)
    assert verdict == "deny" and reply["errDlt"] == "blocked: u5, u1100"
    assert result.kv_ops == 3  # chunks of 500


def test_invite_with_null_list():
    verdict, _, _ = run(INVITE, invite(None), FakeKV())
    assert verdict == "allow"


MEMBER = "callbackBeforeSetGroupMemberInfoCommand"


def member(**changes):
    base = {"callbackCommand": MEMBER, "groupID": "12345", "userID": "user789", "nickName": None,
            "faceURL": None, "roleLevel": None, "ex": None}
    base.update(changes)
    return base


def test_member_info_nickname_filter():
    kv = FakeKV({"moderation:nickname_words": {"spam"}})
    assert run(MEMBER, member(nickName="Alice"), kv)[0] == "allow"
    verdict, reply, _ = run(MEMBER, member(nickName="  Alice   Smith "), kv)
    assert verdict == "modify" and reply["nickName"] == "Alice Smith"
    verdict, reply, _ = run(MEMBER, member(nickName="buy SPAM now"), kv)
    assert verdict == "deny" and reply["errCode"] == 5102
    verdict, reply, _ = run(MEMBER, member(nickName="see www.example.com"), kv)
    assert verdict == "deny" and reply["errCode"] == 5101


def test_member_info_role_guard():
    kv = FakeKV({"moderation:frozen_roles": {"frozen-group"}})
    assert run(MEMBER, member(roleLevel=60), kv)[0] == "allow"
    assert run(MEMBER, member(roleLevel=100), kv)[1]["errCode"] == 5103
    assert run(MEMBER, member(groupID="frozen-group", roleLevel=20), kv)[1]["errCode"] == 5104
    # a nickname-only change in a frozen group is fine
    assert run(MEMBER, member(groupID="frozen-group", nickName="Bob"), kv)[0] == "allow"


FRIEND = "callbackBeforeAddFriendCommand"


def test_friend_request_rate_limit():
    kv = FakeKV({"config:friend_requests": {"limit": "3"}})
    req = {"callbackCommand": FRIEND, "fromUserID": "alice", "toUserID": "bob", "reqMsg": "hi", "ex": ""}
    verdicts = [run(FRIEND, req, kv)[0] for _ in range(5)]
    assert verdicts == ["allow", "allow", "allow", "deny", "deny"]
    assert kv.ttls["ratelimit:friend_requests:alice"] == 3600
    other = dict(req, fromUserID="carol")
    assert run(FRIEND, other, kv)[0] == "allow"


@pytest.mark.parametrize("command", ["callbackBeforeSendSingleMsgCommand", "callbackBeforeSendGroupMsgCommand"])
def test_keyword_filter(command):
    kv = FakeKV({"filter:words": {"casino", "scam"}})
    msg = {"callbackCommand": command, "sendID": "u1", "recvID": "u2", "groupID": "g1", "contentType": 101,
           "sessionType": 1, "content": json.dumps({"content": "hello there"}), "atUserList": None, "seq": 0}
    assert run(command, msg, kv)[0] == "allow"
    msg["content"] = json.dumps({"content": "Best CASINO in town!"})
    verdict, reply, result = run(command, msg, kv)
    assert verdict == "deny" and reply["errCode"] == 5301 and result.kv_ops == 1
    msg["contentType"] = 102  # a picture: not filtered
    assert run(command, msg, kv)[0] == "allow"
    msg["contentType"] = 101
    msg["content"] = "not json"
    assert run(command, msg, kv)[0] == "allow"


def test_keyword_filter_2kb_message_against_1000_words():
    kv = FakeKV({"filter:words": {f"bad{i}" for i in range(1000)}})
    text = " ".join(f"word{i}" for i in range(300))[:2048]
    msg = {"contentType": 101, "content": json.dumps({"content": text})}
    verdict, _, result = run("callbackBeforeSendGroupMsgCommand", msg, kv)
    assert verdict == "allow" and result.kv_ops == 1


GROUP = "callbackBeforeCreateGroupCommand"


def test_restrict_group_creation():
    kv = FakeKV()
    req = {"callbackCommand": GROUP, "operationID": "o", "groupID": "", "groupName": "g", "ownerUserID": "alice",
           "creatorUserID": "alice", "needVerification": 0, "initMemberList": [{"userID": "bob", "roleLevel": 20}]}
    assert run(GROUP, req, kv)[0] == "allow"
    verdict, reply, _ = run(GROUP, dict(req, needVerification=2), kv)
    assert verdict == "modify" and reply["needVerification"] == 1
    kv.data["groups:creators"] = {"bob"}
    assert run(GROUP, req, kv)[1]["errCode"] == 5401
    kv.data["groups:creators"] = {"alice"}
    for _ in range(8):
        run(GROUP, req, kv)
    assert run(GROUP, req, kv)[1]["errCode"] == 5402  # 11th group today
