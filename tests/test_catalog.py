import json
from pathlib import Path

import pytest

from server.catalog import catalog, parse_type

SHARED = Path(__file__).resolve().parents[2] / "shared" / "openim" / "callbacks.json"
PACKAGED = Path(__file__).resolve().parents[1] / "server" / "data" / "callbacks.json"


def test_all_52_commands_loaded_from_the_json_file():
    cat = catalog()
    raw = json.loads(PACKAGED.read_text())
    assert len(cat) == 52 == len(raw)
    assert set(cat.commands) == set(raw)
    kinds = {c.kind for c in cat.commands.values()}
    assert kinds == {"before", "after"}


@pytest.mark.skipif(not SHARED.exists(), reason="shared/ not beside the checkout")
def test_packaged_copy_matches_shared_catalogue():
    # Each entry's "scriptgate" object is ScriptGate's own data (server/catalog.py); the rest is the copy.
    packaged = json.loads(PACKAGED.read_text())
    for entry in packaged.values():
        assert set(entry.pop("scriptgate")) <= {
            "openim_lines", "line_notes", "reply_traps", "content_json_object", "invite_narrowing", "notes"}
    assert json.loads(SHARED.read_text()) == packaged


def test_every_type_string_parses():
    raw = json.loads(PACKAGED.read_text())
    for entry in raw.values():
        for spec in list(entry["request"].values()) + list((entry.get("response_mutable") or {}).values()):
            parse_type(spec)  # raises on anything unparsed


@pytest.mark.parametrize(
    "spec, value, ok",
    [
        ("int32|null", None, True),
        ("int32|null", 2**31, False),
        ("int32|null", -(2**31), True),
        ("int32", True, False),
        ("int32", "5", False),
        ("int32", 1.0, False),
        ("uint32 (note)", -1, False),
        ("string[]|null", ["a", "b"], True),
        ("string[]|null", ["a", 1], False),
        ("string (ALWAYS applied - must be echoed)", None, False),
        ("object<string,bool>|null (replaces whole map)", {"a": True}, True),
        ("object<string,bool>|null (replaces whole map)", {"a": 1}, False),
        ("bool|null", 0, False),
    ],
)
def test_type_checks(spec, value, ok):
    err = parse_type(spec).check(value, "f", strict_fields=True, lists_nullable=False)
    assert (err is None) == ok, err


def test_member_callback_list_requires_user_id():
    cmd = catalog().get("callbackBeforeMembersJoinGroupCommand")
    assert cmd.check_reply_fields({"memberCallbackList": [{"userID": "u1", "roleLevel": 60}]}) is None
    err = cmd.check_reply_fields({"memberCallbackList": [{"nickname": "x"}]})
    assert "userID is required" in err
    err = cmd.check_reply_fields({"memberCallbackList": [{"userID": None}]})
    assert "must not be null" in err
    err = cmd.check_reply_fields({"memberCallbackList": [{"userID": "u", "nick": "x"}]})
    assert "not a field" in err


def test_reply_fields_must_be_mutable():
    cmd = catalog().get("callbackBeforeSendSingleMsgCommand")
    assert "cannot change any field" in cmd.check_reply_fields({"content": "x"})
    invite = catalog().get("callbackBeforeInviteJoinGroupCommand")
    assert invite.check_reply_fields({"invitedUserIDs": ["a"]}) is None
    assert "cannot be changed" in invite.check_reply_fields({"groupID": "g"})


def test_offline_push_info_object_checked():
    cmd = catalog().get("callbackBeforeOfflinePushCommand")
    assert cmd.check_reply_fields({"offlinePushInfo": {"title": "t", "iOSBadgeCount": True}}) is None
    assert cmd.check_reply_fields({"offlinePushInfo": {"title": 5}}) is not None
    assert cmd.check_reply_fields({"offlinePushInfo": None}) is None


def test_request_check_accepts_go_nulls_and_unknown_fields():
    cmd = catalog().get("callbackBeforeSendGroupMsgCommand")
    assert cmd.check_request({"atUserList": None, "newFieldFromFutureOpenIM": 1}) is None
    assert "atUserList" in cmd.check_request({"atUserList": "a"})
    invite = catalog().get("callbackBeforeInviteJoinGroupCommand")
    assert invite.check_request({"invitedUserIDs": None}) is None  # Go nil slice
    assert "invitedUserIDs" in invite.check_request({"invitedUserIDs": "user1"})
