"""Sample callback requests: one realistic JSON request per catalogue command.

The files ``server/data/samples/<callbackCommand>.json`` ship with the package and are
what ``scriptgate sample COMMAND``, ``scriptgate run SCRIPT --sample`` and the admin test
endpoint's ``{"sample": true}`` use. They are generated, never edited by hand:

    python3 -m server.samples --write    # regenerate every file from the catalogue
    python3 -m server.samples --check    # exit 1 if a checked-in file differs (CI runs it as a test)

How a request is built:

* where OpenIM's documentation gives an example request (the seeds, ``SEEDS`` below), the
  sample is that example byte for byte, so it is exactly what the documentation shows;
* otherwise every request field of the catalogue (``data/callbacks.json``), in its order,
  gets a realistic value: the command's own override (``OVERRIDES``), else the value for
  the field's name (``BY_NAME``; group or single-chat flavour), if it fits the field's
  catalogue type, else a neutral value of that type (``""``, ``0``, ``false``, ``[]``).

Values follow OpenIM's conventions: user IDs ``user1``.., group ``12345``, sessionType 1
(single) or 3 (group), contentType 101 (text) whose ``content`` is the JSON text
``{"content":"..."}``, times in int64 milliseconds, platform 1 = ``IOS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from server.catalog import Catalog, Command, TypeSpec, catalog

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"

# The request examples of OpenIM's callback documentation (/work/shared/seeds), verbatim.
SEEDS: dict[str, str] = {
    # 000_edbf3b863530c6ce.txt: "Callback Before Inviting New Members to Group"
    "callbackBeforeInviteJoinGroupCommand": """{
"callbackCommand": "callbackBeforeInviteJoinGroupCommand",
"operationID": "1646445464564",
"groupID": "12345",
"reason": "friend",
"invitedUserIDs": ["user1","user2"]
}
""",
    # 001_b7a922e818639449.txt: "Callback Before Setting Group Member Info"
    "callbackBeforeSetGroupMemberInfoCommand": """{
"callbackCommand": "callbackBeforeSetGroupMemberInfoCommand",
"groupID": "12345",
"userID": "user789",
"nickName":"user",
"faceURL": "http://example.com/path/to/face/image.png",
"roleLevel": 20,
"ex": "Extra data"
}
""",
}

SEND_TIME = 1764991015123  # 2025-12-06T03:16:55.123Z, in ms like every OpenIM time
GROUP_ID = "12345"
TEXT = orjson.dumps({"content": "hello, see you at 9?"}).decode()  # a text message's content (contentType 101)
FACE_URL = "https://example.com/avatar/user1.png"
GROUP_FACE_URL = f"https://example.com/group/{GROUP_ID}.png"

# Field name -> value, or a function of "is this a group conversation" for fields whose
# realistic value depends on it. A value that does not fit the command's catalogue type
# for the field is not used (the neutral value of the type is).
BY_NAME: dict[str, Any] = {
    "operationID": "1764991015123-user1-4211",
    "sendID": "user1",
    "recvID": "user2",
    "userID": "user1",
    "groupID": GROUP_ID,
    "groupId": GROUP_ID,
    "serverMsgID": "ec8e8db8a3b4c4d1f9d3c6cfb0b7a2e1",
    "clientMsgID": "4a3c1e3f9b7d4b0e8f1a6c2d5e7b9a01",
    "senderPlatformID": 1,
    "platformID": 1,
    "platform": "IOS",
    "senderNickname": "Alice",
    "sessionType": lambda group: 3 if group else 1,
    "msgFrom": 100,  # a user's message (200: system)
    "contentType": 101,  # text
    "status": 1,  # MsgStatusSending: callbacks run before the message is stored
    "sendTime": SEND_TIME,
    "createTime": SEND_TIME - 3,
    "content": TEXT,
    "seq": 0,  # send-time callbacks: the seq is assigned later
    "atUserList": None,  # Go's nil slice: no @mentions
    "atUserIDList": None,
    "faceURL": FACE_URL,
    "ex": "",
    "conversationID": lambda group: f"sg_{GROUP_ID}" if group else "si_user1_user2",
    "conversationId": lambda group: f"sg_{GROUP_ID}" if group else "si_user1_user2",
    "conversationType": lambda group: 3 if group else 1,
    "userIDList": ["user2"],
    "fromUserID": "user1",
    "toUserID": "user2",
    "reqMsg": "Hi, I'm Alice from the hiking group",
    "ownerUserID": "user1",
    "friendUserID": "user2",
    "friendUserIDs": ["user2", "user3"],
    "blackUserID": "user2",
    "remark": "Bob (hiking)",
    "nickName": "Alice",
    "groupName": "Weekend hikers",
    "notification": "Meet at the station at 9",
    "introduction": "Hikes around the city, every weekend",
    "creatorUserID": "user1",
    "groupType": 2,  # a working group, the only type OpenIM v3 creates
    "memberCount": 3,
    "initMemberList": [{"userID": "user2", "roleLevel": 20}, {"userID": "user3", "roleLevel": 20}],
    "memberList": [{"userID": "user4", "ex": ""}],
    "reason": "friend",
    "reqMessage": "Hi, I'd like to join",
    "kickedUserIDs": ["user3"],
    "membersID": ["user1", "user2", "user3"],
    "ownerID": "user1",
    "oldOwnerUserID": "user1",
    "newOwnerUserID": "user2",
    "roleLevel": 20,  # member (60 admin, 100 owner)
    "ownerUserId": "user1",
    "userId": "user2",
    "users": [{"userID": "user5", "nickname": "Eve", "faceURL": "", "ex": "", "createTime": SEND_TIME,
               "appMangerLevel": 1, "globalRecvMsgOpt": 0}],
}

# Per-command values where the name alone would mislead (the catalogue notes say why).
OVERRIDES: dict[str, dict[str, Any]] = {
    "callbackAfterGroupMsgReadCommand": {
        "sendID": "user1", "receiveID": "user2", "unreadMsgNum": 42, "contentType": 3,
    },
    "callbackAfterSingleMsgReadCommand": {"userID": "user2", "Seqs": [41, 42], "contentType": 1},
    "callbackBeforeAfterMsgCommand": {"seq": 42},  # revoke: the revoked message's seq
    "callbackAfterMsgSaveDBCommand": {"recvID": "", "seq": 42},  # a group message: groupID set, recvID empty
    "callbackAfterUserOnlineCommand": {"operationID": "p_4211_17", "seq": SEND_TIME, "isAppBackground": False,
                                       "connID": ""},
    "callbackAfterUserOfflineCommand": {"operationID": "p_4211_18", "seq": SEND_TIME, "connID": ""},
    "callbackAfterUserKickOffCommand": {"operationID": "p_4211_19", "seq": SEND_TIME},
    "callbackBeforeOfflinePushCommand": {
        "groupID": "", "title": "Alice", "desc": "hello, see you at 9?", "iOSPushSound": "default",
        "iOSBadgeCount": True, "signalInfo": "",
    },
    "callbackBeforeOnlinePushCommand": {"groupID": ""},
    "callbackBeforeGroupOnlinePushCommand": {"seq": 42},
    "callbackBeforeAddFriendAgreeCommand": {"fromUserID": "user1", "blackUserID": "user2", "HandleResult": 1,
                                            "HandleMsg": "Nice to meet you"},
    "callbackAfterAddFriendAgreeCommand": {"fromUserID": "user1", "blackUserID": "user2", "HandleResult": 1,
                                           "HandleMsg": "Nice to meet you"},
    "callbackBeforeUpdateUserInfoCommand": {"ex": None},
    "callbackBeforeUpdateUserInfoExCommand": {"faceURL": None, "ex": None},
    "callbackAfterUpdateUserInfoExCommand": {"faceURL": None, "ex": None},
    "callbackBeforeCreateGroupCommand": {"faceURL": GROUP_FACE_URL, "memberCount": 0, "status": 0, "notificationUpdateTime": 0,
                                         "notificationUserID": ""},
    "callbackAfterCreateGroupCommand": {"faceURL": GROUP_FACE_URL,
        "initMemberList": [{"userID": "user1", "roleLevel": 100}, {"userID": "user2", "roleLevel": 20},
                           {"userID": "user3", "roleLevel": 20}],
        "notificationUpdateTime": SEND_TIME, "notificationUserID": "user1",
    },
    "callbackAfterSetGroupMemberInfoCommand": {"userID": "user2", "nickName": "Bob", "faceURL": None,
                                               "roleLevel": 60, "ex": None},
    "callbackAfterQuitGroupCommand": {"userID": "user3"},
    "callbackAfterKickGroupCommand": {"reason": "spam"},
    "callbackAfterDisMissGroupCommand": {"groupType": "\u0002"},  # Go string(int32(2)): one rune
    "callbackBeforeJoinGroupCommand": {"groupType": "\u0002", "applyID": "user4"},
    "callbackAfterJoinGroupCommand": {"joinSource": 3, "inviterUserID": "user4"},  # 3: found by search
    "callbackBeforeSetGroupInfoCommand": {"faceURL": GROUP_FACE_URL, "operationID": ""},  # never filled by OpenIM
    "callbackAfterSetGroupInfoCommand": {"faceURL": GROUP_FACE_URL, "operationID": "", "ex": None, "needVerification": None,
                                         "lookMemberInfo": None, "applyMemberFriend": None},
    "callbackBeforeSetGroupInfoExCommand": {"operationID": "", "notification": None, "introduction": None,
                                            "faceURL": None, "ex": None, "needVerification": None,
                                            "lookMemberInfo": None, "applyMemberFriend": None},
    "callbackAfterSetGroupInfoExCommand": {"operationID": "", "notification": None, "introduction": None,
                                           "faceURL": None, "ex": None, "needVerification": None,
                                           "lookMemberInfo": None, "applyMemberFriend": None},
    "callbackBeforeCreateGroupChatConversationsCommand": {"ownerUserId": ""},  # never set by OpenIM
    "callbackAfterCreateGroupChatConversationsCommand": {"ownerUserId": ""},
}


def is_group(command: Command) -> bool:
    """Whether the sample is a group conversation (sessionType 3, conversation ``sg_...``)."""
    # afterMsgSaveDB carries both recvID and groupID; the group flavour fills more of it.
    return "Group" in command.name or command.name == "callbackAfterMsgSaveDBCommand"


def neutral(spec: TypeSpec) -> Any:
    """The plainest value of a type: what Go sends for an empty field."""
    if spec.kind == "string":
        return ""
    if spec.kind == "bool":
        return False
    if spec.kind == "null":
        return None
    if spec.kind == "list":
        return []
    if spec.kind == "map":
        return {}
    if spec.kind == "object":
        return {name: neutral(field) for name, field in spec.fields.items()}
    return 0  # the integer kinds


def field_value(command: Command, name: str, spec: TypeSpec) -> Any:
    special = OVERRIDES.get(command.name, {})
    if name in special:
        return special[name]
    if name == "callbackCommand":
        return command.name
    if name in BY_NAME:
        value = BY_NAME[name]
        if callable(value):
            value = value(is_group(command))
        if spec.check(value, name) is None:
            return value
    return neutral(spec)


def generate(command: Command) -> bytes:
    """The sample file's exact bytes for ``command``."""
    seed = SEEDS.get(command.name)
    if seed is not None:
        return seed.encode()
    body = {name: field_value(command, name, spec) for name, spec in command.request.items()}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def generate_all(cat: Catalog | None = None) -> dict[str, bytes]:
    cat = cat or catalog()
    return {name: generate(command) for name, command in cat.commands.items()}


def names() -> list[str]:
    """The commands that have a sample (every catalogue command), sorted."""
    return sorted(catalog().commands)


class NoSample(LookupError):
    pass


def sample_bytes(command: str) -> bytes:
    """The shipped sample for ``command``, as the file has it."""
    if command not in catalog():
        raise NoSample(f"unknown callbackCommand {command!r} (`scriptgate sample --list` lists them)")
    return resources.files("server").joinpath(f"data/samples/{command}.json").read_bytes()


def sample(command: str) -> dict[str, Any]:
    """The shipped sample for ``command``, parsed."""
    data = orjson.loads(sample_bytes(command))
    assert isinstance(data, dict)
    return data


def _write(directory: Path, files: dict[str, bytes], out: Callable[[str], None]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, data in files.items():
        path = directory / f"{name}.json"
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            written += 1
    for stale in sorted(directory.glob("*.json")):
        if stale.stem not in files:
            stale.unlink()
            out(f"removed {stale.name} (no longer in the catalogue)")
    out(f"{len(files)} samples in {directory}: {written} written, {len(files) - written} unchanged")
    return 0


def _check(directory: Path, files: dict[str, bytes], out: Callable[[str], None]) -> int:
    problems = []
    for name, data in files.items():
        path = directory / f"{name}.json"
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif path.read_bytes() != data:
            problems.append(f"{path.name}: differs from the generator's output")
    problems += [f"{p.name}: not a catalogue command" for p in sorted(directory.glob("*.json")) if p.stem not in files]
    for line in problems:
        out(line)
    out("samples are up to date" if not problems else "run: python3 -m server.samples --write")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m server.samples", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"(re)write {SAMPLES_DIR}")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file differs from the generator's output")
    parser.add_argument("--dir", type=Path, default=SAMPLES_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    files = generate_all()
    if args.write:
        return _write(args.dir, files, print)
    return _check(args.dir, files, lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
