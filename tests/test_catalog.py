import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from server.catalog import TypeSpec, catalog, load_catalog

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
            "openim_lines", "line_notes", "reply_traps", "content_json_object", "invite_narrowing", "notes",
            "echoed", "empty_unchanged", "reply_names", "request_schema", "reply_schema"}
    assert json.loads(SHARED.read_text()) == packaged


def test_every_schema_is_json_schema_2020_12():
    raw = json.loads(PACKAGED.read_text())
    for entry in raw.values():
        for key in ("request_schema", "reply_schema"):
            schema = entry["scriptgate"][key]
            assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            Draft202012Validator.check_schema(schema)


INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}


@pytest.mark.parametrize(
    "schema, value, ok",
    [
        ({**INT32, "type": ["integer", "null"]}, None, True),
        ({**INT32, "type": ["integer", "null"]}, 2**31, False),
        ({**INT32, "type": ["integer", "null"]}, -(2**31), True),
        (INT32, True, False),
        (INT32, "5", False),
        (INT32, 1.0, False),  # Go's decoder refuses 1.0 for an int32 (JSON Schema would accept it)
        (UINT32, -1, False),
        ({"type": ["array", "null"], "items": {"type": "string"}}, ["a", "b"], True),
        ({"type": ["array", "null"], "items": {"type": "string"}}, ["a", 1], False),
        ({"type": "array", "items": {"type": "string"}}, None, False),
        ({"type": "string", "description": "ALWAYS applied - must be echoed"}, None, False),
        ({"type": ["object", "null"], "additionalProperties": {"type": "boolean"}}, {"a": True}, True),
        ({"type": ["object", "null"], "additionalProperties": {"type": "boolean"}}, {"a": 1}, False),
        ({"type": ["boolean", "null"]}, 0, False),
    ],
)
def test_type_checks(schema, value, ok):
    err = TypeSpec.from_schema(schema).check(value, "f")
    assert (err is None) == ok, err


def test_messages_name_the_path_and_the_type():
    spec = TypeSpec.from_schema({**INT32, "type": ["integer", "null"]})
    assert spec.check("5", "f") == "f must be int32 integer or null"
    assert spec.check(2**31, "f") == "f is out of range for int32 (-2147483648..2147483647)"
    assert TypeSpec.from_schema(INT32).check(None, "f") == "f must be int32 integer, not null"
    ids = TypeSpec.from_schema({"type": ["array", "null"], "items": {"type": "string"}})
    assert ids.check("user1", "ids") == "ids must be list of string or null"
    assert ids.check(["a", 5], "ids") == "ids[1] must be string"


def test_unsupported_schema_keywords_are_refused():
    # Deny by default: a keyword the compiled checks do not enforce must not look enforced.
    with pytest.raises(ValueError, match="pattern"):
        TypeSpec.from_schema({"type": "string", "pattern": "^a"})
    with pytest.raises(ValueError, match="one JSON type"):
        TypeSpec.from_schema({"type": ["string", "integer"]})


# Values of every JSON shape the catalogue's types meet, for comparing with jsonschema.
PROBES = [None, "", "x", 0, 1, -1, 2**31, -(2**31) - 1, 2**32, 2**63, True, False, [], ["a"], [1], [None], {},
          {"a": True}, {"a": 1}, {"userID": "u"}, {"userID": None}, {"userID": "u", "nick": "x"}, {"title": 5},
          [{"userID": "u"}], [{"nickname": "x"}], [{"userID": None}], [{"userID": "u", "nick": "x"}]]


def test_compiled_checks_agree_with_jsonschema():
    raw = json.loads(PACKAGED.read_text())
    compared = 0
    for name, command in catalog().commands.items():
        own = raw[name]["scriptgate"]
        for fields, schema in ((command.request, own["request_schema"]), (command.mutable, own["reply_schema"])):
            for field, spec in fields.items():
                validator = Draft202012Validator(schema["properties"][field])
                for value in PROBES:
                    assert (spec.check(value, field) is None) == validator.is_valid(value), (name, field, value)
                    compared += 1
    assert compared > 10_000


def test_echoed_fields_are_explicit_data():
    cat = catalog()
    assert cat.get("callbackBeforeSetGroupInfoCommand").echoed == ("groupID", "groupName", "introduction", "faceURL")
    assert cat.get("callbackBeforeSetGroupInfoExCommand").echoed == (
        "groupID", "groupName", "introduction", "faceURL", "ex", "needVerification", "lookMemberInfo",
        "applyMemberFriend")
    assert [n for n, c in cat.commands.items() if c.echoed] == [
        "callbackBeforeSetGroupInfoCommand", "callbackBeforeSetGroupInfoExCommand"]
    cmd = cat.get("callbackBeforeSetGroupInfoCommand")
    request = {"groupID": "g", "groupName": "n", "introduction": "i", "faceURL": "f", "ex": "e"}
    assert cmd.with_echo(request, {"groupName": "new"}) == {
        "groupName": "new", "groupID": "g", "introduction": "i", "faceURL": "f"}
    assert cmd.with_echo(request, {"nextCode": 1}) == {"nextCode": 1}  # a stop is not applied
    assert cmd.empty_unchanged == {"groupName", "introduction", "faceURL"}
    modify = cat.get("callbackBeforeMsgModifyCommand")
    assert modify.reply_names == {"faceURL": "senderFaceURL", "atUserList": "atUserIDList"}
    assert [n for n, c in cat.commands.items() if c.reply_names] == ["callbackBeforeMsgModifyCommand"]


def test_schema_and_described_fields_cannot_drift():
    raw = json.loads(PACKAGED.read_text())
    entry = raw["callbackBeforeSetGroupInfoCommand"]
    del entry["scriptgate"]["reply_schema"]["properties"]["ex"]
    with pytest.raises(ValueError, match="reply_schema does not list"):
        load_catalog({"callbackBeforeSetGroupInfoCommand": entry})
    entry = raw["callbackBeforeInviteJoinGroupCommand"]
    entry["scriptgate"]["echoed"] = ["groupID"]  # not a field its reply can set
    with pytest.raises(ValueError, match="echoed"):
        load_catalog({"callbackBeforeInviteJoinGroupCommand": entry})


def reply_problem(command, changed):
    """Why ``changed`` cannot go into the command's reply, or None."""
    return command.canonical_reply(changed)[1]


def test_member_callback_list_requires_user_id():
    cmd = catalog().get("callbackBeforeMembersJoinGroupCommand")
    assert reply_problem(cmd, {"memberCallbackList": [{"userID": "u1", "roleLevel": 60}]}) is None
    err = reply_problem(cmd, {"memberCallbackList": [{"nickname": "x"}]})
    assert "userID is required" in err
    err = reply_problem(cmd, {"memberCallbackList": [{"userID": None}]})
    assert "must not be null" in err
    err = reply_problem(cmd, {"memberCallbackList": [{"userID": "u", "nick": "x"}]})
    assert "not a field" in err


def test_reply_fields_must_be_mutable():
    cmd = catalog().get("callbackBeforeSendSingleMsgCommand")
    assert "cannot change any field" in reply_problem(cmd, {"content": "x"})
    invite = catalog().get("callbackBeforeInviteJoinGroupCommand")
    assert reply_problem(invite, {"invitedUserIDs": ["a"]}) is None
    assert "cannot be changed" in reply_problem(invite, {"groupID": "g"})


def test_offline_push_info_object_checked():
    cmd = catalog().get("callbackBeforeOfflinePushCommand")
    assert reply_problem(cmd, {"offlinePushInfo": {"title": "t", "iOSBadgeCount": True}}) is None
    assert reply_problem(cmd, {"offlinePushInfo": {"title": 5}}) is not None
    assert reply_problem(cmd, {"offlinePushInfo": None}) is None


def test_request_check_accepts_go_nulls_and_unknown_fields():
    cmd = catalog().get("callbackBeforeSendGroupMsgCommand")
    assert cmd.check_request({"atUserList": None, "newFieldFromFutureOpenIM": 1}) is None
    assert "atUserList" in cmd.check_request({"atUserList": "a"})
    invite = catalog().get("callbackBeforeInviteJoinGroupCommand")
    assert invite.check_request({"invitedUserIDs": None}) is None  # Go nil slice
    assert "invitedUserIDs" in invite.check_request({"invitedUserIDs": "user1"})
