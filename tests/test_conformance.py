"""OpenIM conformance: a Go client that mirrors OpenIM's own webhook code (conformance/, see its
README) posts every catalogue command to a real ``scriptgate serve`` for both OpenIM lines
(main 7848d7c and v3.8.3-patch.16), decodes and applies the replies as OpenIM does, and
reports the outcome OpenIM reaches: rejected (with errCode/errMsg/errDlt), the fields it
changed, or a decode error / nil-pointer crash / refused action. Each case below states
the outcome OpenIM must reach; a mismatch fails with a per-case diff.

Cases that need different scripts for the same command run in separate phases: a phase
uploads one script per command it uses, then runs all its cases in one Go process."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.catalog import catalog
from tests.server_proc import ServerProc, start_server

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "conformance"
MAIN, V38 = "main", "v3.8"
LINES = (MAIN, V38)
GO_ENV = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "GOPROXY": "off"}

CLOSED = "callbackBeforeAddFriendCommand"  # failure_policy = "closed" in the test config
INVITE = "callbackBeforeInviteJoinGroupCommand"
MEMBER = "callbackBeforeSetGroupMemberInfoCommand"
MODIFY = "callbackBeforeMsgModifyCommand"
JOIN = "callbackBeforeMembersJoinGroupCommand"
USER_EX = "callbackBeforeUpdateUserInfoExCommand"
REFUSED = "request refused by the callback server"  # reject_errmsg default


@dataclass
class Case:
    id: str
    command: str
    script: str | None  # None: no script for the command
    expect: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] | None = None
    lines: tuple[str, ...] = LINES
    expect_v38: dict[str, Any] | None = None  # replaces expect on the release line
    url: str = "/callbackExample"  # webhooks.yml url: path (and query) after host:port


def script(body: str) -> str:
    return "def handle(req):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def allow_script(fields: dict[str, Any]) -> str:
    return script("return allow(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")")


def opaque_allow(fields: dict[str, Any]) -> str:
    """allow(**fields) with names and values the upload-time check cannot read (split names,
    values through json.loads), so the server's run-time protection is what gets tested."""
    items = ", ".join(f"({k[:1]!r} + {k[1:]!r}): json.loads({json.dumps(v)!r})" for k, v in fields.items())
    return script(f"return allow(**{{{items}}})")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Expected "applied" maps as the Go client reports them: changed leaves by dotted path."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- cases -------------------------------------------------------------------------------

@functools.cache
def catalogue() -> dict[str, Any]:
    return json.loads((ROOT / "server" / "data" / "callbacks.json").read_text())


def before_commands() -> list[str]:
    return [name for name, spec in catalogue().items() if spec["kind"] == "before"]


def after_commands() -> list[str]:
    return [name for name, spec in catalogue().items() if spec["kind"] == "after"]


OFFLINE_PUSH = {"title": "t1", "desc": "d1", "ex": "e1", "iOSPushSound": "s1", "iOSBadgeCount": True, "signalInfo": "si1"}
NEW_USERS = [{"userID": "r1", "nickname": "rn1", "faceURL": "", "ex": "", "createTime": 0, "appMangerLevel": 1,
              "globalRecvMsgOpt": 0}]

# Reply value per mutable field, where the generic rule (string -> "new-<field>", int32 -> 7,
# bool -> True, string[] -> ["n1", "n2"]) does not fit; None: covered by an M-case instead.
SPECIAL_VALUES: dict[tuple[str, str], Any] = {
    (MODIFY, "content"): '{"content":"changed"}',
    (MODIFY, "options"): {"history": False, "unreadCount": True},
    (MODIFY, "offlinePushInfo"): None,  # M6: OpenIM never tells whether the message has one
    ("callbackBeforeOfflinePushCommand", "offlinePushInfo"): OFFLINE_PUSH,
    ("callbackBeforeUserRegisterCommand", "users"): NEW_USERS,
    (INVITE, "invitedUserIDs"): None,  # M1
    (USER_EX, "ex"): None,  # M4: never in the request, so never known to be safe
    (MEMBER, "roleLevel"): 60,
    (JOIN, "memberCallbackList"): None,  # per member field below
}

MAIN_ONLY = {
    "callbackBeforeCreateSingleChatConversationsCommand", "callbackAfterCreateSingleChatConversationsCommand",
    "callbackBeforeCreateGroupChatConversationsCommand", "callbackAfterCreateGroupChatConversationsCommand",
    "callbackAfterMsgSaveDBCommand",
}


def generic_value(type_text: str, name: str) -> Any:
    t = type_text.split(" ")[0]
    if t.startswith("string[]"):
        return ["n1", "n2"]
    if t.startswith("string"):
        return f"new-{name}"
    if t.startswith("int32"):
        return 7
    if t.startswith("bool"):
        return True
    raise AssertionError(f"no generic value for {name}: {type_text}")


def mutable_cases() -> list[Case]:
    cases = []
    for command, spec in catalogue().items():
        for name, type_text in spec.get("response_mutable", {}).items():
            value = SPECIAL_VALUES.get((command, name), ...)
            if value is None:
                continue
            if value is ...:
                value = generic_value(type_text, name)
            applied = flatten({name: value})
            cases.append(Case(f"field {name}", command, allow_script({name: value}), {"applied": applied}))
    for name, value in [("nickname", "nn2"), ("faceURL", "nf2"), ("roleLevel", 60), ("muteEndTime", 1800000000000),
                        ("ex", "nx2")]:
        cases.append(Case(f"field memberCallbackList.{name}", JOIN,
                          allow_script({"memberCallbackList": [{"userID": "u2", name: value}]}),
                          {"applied": {f"members.u2.{name}": value}}))
    return cases


DENY = script('return deny(5001, "denied", "by conformance")')
DENIED = {"rejected": True, "errCode": 5001, "errMsg": "denied", "errDlt": "by conformance"}
RAN = script('kv.incr("ran:" + req["callbackCommand"])\nreturn allow()')
INVALID = {"reply_error": "invalid_result"}  # continue unchanged, the reply says why


def m_cases() -> list[Case]:
    c: list[Case] = []
    # M1: OpenIM applies nothing from this reply, so narrowing must become a rejection
    c.append(Case("M1 narrowing rejects, naming the removed user", INVITE,
                  script('return allow(invitedUserIDs=[u for u in req["invitedUserIDs"] if u != "u3"])'),
                  {"rejected": True, "errCode": 5001, "errMsg": "invitation refused", "errDlt_contains": ["u3"]},
                  input={"invitedUserIDs": ["u1", "u2", "u3"]}))
    ready = (ROOT / "scripts" / f"{INVITE}.py").read_text()
    c.append(Case("M1 ready script refuses a blocked invitee", INVITE, ready,
                  {"rejected": True, "errCode": 5001, "errMsg": "invitation refused", "errDlt_contains": ["u2"]},
                  input={"invitedUserIDs": ["u1", "u2"]}))
    c.append(Case("M1 ready script, nobody blocked", INVITE, ready, {}, input={"invitedUserIDs": ["u1", "u3"]}))
    # M2: a deny stays a deny whatever the code; out of range -> deny_errcode_fallback 5000
    for command, code in [("callbackBeforeSendSingleMsgCommand", "0"), ("callbackBeforeSendGroupMsgCommand", "99"),
                          ("callbackBeforeJoinGroupCommand", "2147483648"),
                          ("callbackBeforeAddBlackCommand", "-1")]:
        c.append(Case(f"M2 deny({code}) is a deny with 5000", command,
                      script(f'return deny(int("{code}"), "m2 {code}", "kept")'),
                      {"rejected": True, "errCode": 5000, "errMsg": f"m2 {code}", "errDlt": "kept"}))
    # M3: invalid results: OpenIM continues unchanged, never a decode error; the reply carries `error`
    m3 = [
        ("roleLevel=1.0", MEMBER, 'return allow(roleLevel=float(req["roleLevel"]))'),
        ("roleLevel=True", MEMBER, 'return allow(roleLevel=req["roleLevel"] == 20)'),
        ("roleLevel=2**31", MEMBER, 'return allow(roleLevel=int("2147483648"))'),
        ("muteEndTime=2**63", JOIN,
         'return allow(memberCallbackList=[{"userID": "u2", "muteEndTime": int("9223372036854775808")}])'),
        ("member without userID", JOIN, 'm = {}\nm["nick" + "name"] = "x"\nreturn allow(memberCallbackList=[m])'),
        ("ex on a reject-only command", "callbackBeforeAddFriendAgreeCommand", 'return {"e" + "x": "x"}'),
        ("notification on setGroupInfo", "callbackBeforeSetGroupInfoCommand", 'return {"notifi" + "cation": "x"}'),
        ("plain dict with nextCode 1", "callbackBeforeImportFriendsCommand", 'return {"next" + "Code": 1}'),
        ("isPinned=1", "callbackBeforeCreateSingleChatConversationsCommand", 'return allow(isPinned=int("1"))'),
    ]
    for what, command, body in m3:
        c.append(Case(f"M3 {what}", command, script(body), dict(INVALID)))
    c.append(Case("M3 nickname is nickName (OpenIM's decoder ignores case)", MEMBER,
                  script('return {"nick" + "name": "x"}'), {"applied": {"nickName": "x"}}))
    # M4: fields the client did not send: OpenIM would dereference nil; never a crash
    for name, value in [("nickName", "x"), ("faceURL", "x"), ("ex", "x")]:
        c.append(Case(f"M4 {name} not sent by the client", USER_EX, opaque_allow({name: value}), {},
                      input={name: None}))
    c.append(Case("M4 ex (never in the request) with the field set", USER_EX, opaque_allow({"ex": "x"}), {}))
    # M5: msgModify content must be a JSON object text; main refuses the send otherwise
    for what, value in [("text", "not json"), ("a JSON list", "[1]"), ("a JSON string", '"x"')]:
        c.append(Case(f"M5 content is {what}", MODIFY, opaque_allow({"content": value}), {}))
    # M6: offlinePushInfo: the request never shows it; OpenIM panics when the message has none
    c.append(Case("M6 offlinePushInfo, message without one", MODIFY, opaque_allow({"offlinePushInfo": OFFLINE_PUSH}),
                  {}, input={"offlinePushInfo": None}))
    c.append(Case("M6 offlinePushInfo, message with one", MODIFY, opaque_allow({"offlinePushInfo": OFFLINE_PUSH}), {}))
    # M7: a query string in url: puts the command in the query; the script must still run
    for command in before_commands():
        c.append(Case("M7 deny through url: ?contenttype=json", command, DENY, dict(DENIED),
                      url="/callbackExample?contenttype=json"))
    c.append(Case("M7 trailing slash in url:", INVITE, DENY, dict(DENIED), url="/callbackExample/"))
    return c


def failure_cases() -> list[Case]:
    raising = script('raise ValueError("boom")')
    return [
        Case("raise, failure policy closed", CLOSED, raising, {"rejected": True, "errCode": 5000, "errMsg": REFUSED}),
        Case("raise, failure policy open", "callbackBeforeAddBlackCommand", raising, {}),
        Case("invalid result, failure policy closed", CLOSED, script('return {"e" + "x": "x"}'),
             {"rejected": True, "errCode": 5000, "errMsg": REFUSED, "reply_error": "invalid_result"}),
    ]


def edge_cases() -> list[Case]:
    nick = "名前 <b>&amp;</b> \u2028 😀"
    tail = "\u2029✓"
    modify_ex = 'str(req["sendTime"]) + "/" + str(req["seq"]) + "/" + str(req["senderPlatformID"]) + "/" + str(req["status"])'
    return [
        Case("unicode nickName round trip", MEMBER, script(f'return allow(nickName=req["nickName"] + {tail!r})'),
             {"applied": {"nickName": nick + tail}}, input={"nickName": nick}),
        Case("unicode errMsg/errDlt", INVITE, script('return deny(5002, "拒绝 " + req["invitedUserIDs"][0], req["reason"])'),
             {"rejected": True, "errCode": 5002, "errMsg": "拒绝 用户😀", "errDlt": "原因 <&> \u2028"},
             input={"invitedUserIDs": ["用户😀"], "reason": "原因 <&> \u2028"}),
        Case("unicode content", MODIFY, script('return allow(content=\'{"content":"\' + req["senderNickname"] + \'"}\')'),
             {"applied": {"content": '{"content":"你好😀<&>"}'}}, input={"senderNickname": "你好😀<&>"}),
        Case("int32 max roleLevel", MEMBER, allow_script({"roleLevel": 2**31 - 1}), {"applied": {"roleLevel": 2**31 - 1}}),
        Case("int32 min roleLevel", MEMBER, allow_script({"roleLevel": -(2**31)}), {"applied": {"roleLevel": -(2**31)}}),
        Case("int32 min status", "callbackBeforeCreateGroupCommand", allow_script({"status": -(2**31)}),
             {"applied": {"status": -(2**31)}}),
        Case("int64 max muteEndTime", JOIN, allow_script({"memberCallbackList": [{"userID": "u3", "muteEndTime": 2**63 - 1}]}),
             {"applied": {"members.u3.muteEndTime": 2**63 - 1}}),
        Case("int64/uint32/int32 edges in the request", MODIFY, script(f"return allow(ex={modify_ex})"),
             {"applied": {"ex": f"{2**63 - 1}/{2**32 - 1}/{2**31 - 1}/{-(2**31)}"}},
             input={"sendTime": 2**63 - 1, "seq": 2**32 - 1, "senderPlatformID": 2**31 - 1, "status": -(2**31)}),
        Case("10,000 invitees, one blocked", INVITE, (ROOT / "scripts" / f"{INVITE}.py").read_text(),
             {"rejected": True, "errCode": 5001, "errMsg": "invitation refused", "errDlt_contains": ["u9999"]},
             input={"invitedUserIDs": [f"u{i}" for i in range(5000, 10000)] + [f"w{i}" for i in range(5000)]}),
        Case("10,000 invitees, none blocked", INVITE, (ROOT / "scripts" / f"{INVITE}.py").read_text(), {},
             input={"invitedUserIDs": [f"v{i}" for i in range(10000)]}),
    ]


def filter_cases() -> list[Case]:
    """Which messages reach the callback at all (no filter configured in webhooks.yml)."""
    group = "callbackBeforeSendGroupMsgCommand"
    return [
        Case("typing is never sent", group, DENY, {"sent": False}, input={"contentType": 113}),
        Case("notifications: main skips them, v3.8 sends them", group, DENY, {"sent": False},
             input={"contentType": 1400}, expect_v38=dict(DENIED)),
        Case("msgModify on a picture: main sends it, v3.8 (Text only) does not", MODIFY,
             allow_script({"ex": "pic"}), {"applied": {"ex": "pic"}}, input={"contentType": 102},
             expect_v38={"sent": False}),
    ]


def after_ran_cases() -> list[Case]:
    """After callbacks (replies ignored by OpenIM): the script must run, also when url: has a
    query and when main adds ?key=; counted through the KV store."""
    cases = []
    for command in ["callbackAfterSendSingleMsgCommand", "callbackAfterSendGroupMsgCommand",
                    "callbackAfterMsgSaveDBCommand", "callbackAfterAddFriendCommand"]:
        for url in ["/callbackExample", "/callbackExample?contenttype=json"]:
            cases.append(Case(f"after script runs ({url})", command, RAN, {"ran": True}, url=url))
    return cases


def all_cases() -> list[Case]:
    cases = [Case("no script", name, None, {}) for name in catalogue()]
    cases += [Case("deny", name, DENY, dict(DENIED)) for name in before_commands()]
    cases += [Case("deny in an after command is ignored", name, DENY, {}) for name in after_commands()]
    return (cases + mutable_cases() + failure_cases() + m_cases() + edge_cases() + filter_cases()
            + after_ran_cases())


# --- running -----------------------------------------------------------------------------

def phases(cases: list[Case]) -> list[list[Case]]:
    """Greedy packing: a phase holds at most one script per command."""
    out: list[tuple[dict[str, str | None], list[Case]]] = []
    for case in cases:
        for scripts, members in out:
            if scripts.get(case.command, case.script) == case.script:
                scripts[case.command] = case.script
                members.append(case)
                break
        else:
            out.append(({case.command: case.script}, [case]))
    return [members for _, members in out]


def expected_for(case: Case, line: str) -> dict[str, Any]:
    if case.command in MAIN_ONLY and line == V38:
        return {"sent": False}
    expect = case.expect_v38 if (line == V38 and case.expect_v38 is not None) else case.expect
    base = {"sent": True, "rejected": False, "decode_error": "", "network_error": "", "action_error": None,
            "crash": "", "after_ignored": "", "applied": {}}
    return {**base, **expect}


def compare(case: Case, line: str, outcome: dict[str, Any]) -> list[str]:
    problems = []
    for key, want in expected_for(case, line).items():
        if key == "errDlt_contains":
            missing = [w for w in want if w not in outcome["errDlt"]]
            if missing:
                problems.append(f"errDlt {outcome['errDlt']!r} does not name {missing}")
        elif key == "reply_error":
            try:
                got = (json.loads(outcome["reply"]).get("error") or {}).get("kind")
            except (ValueError, AttributeError):
                got = None
            if got != want:
                problems.append(f"reply error kind: expected {want!r}, got {got!r}")
        elif key == "ran":
            continue  # checked through the KV counters
        elif outcome.get(key) != want:
            problems.append(f"{key}: expected {want!r}, got {outcome.get(key)!r}")
    return problems


@pytest.fixture(scope="session")
def go_env(tmp_path_factory) -> tuple[str, dict[str, str]]:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("go is not installed (golang-go); the OpenIM conformance client cannot run in CI")
        pytest.skip("go is not installed (golang-go); CI installs it")
    return go, {**os.environ, **GO_ENV, "GOCACHE": str(tmp_path_factory.mktemp("gocache"))}


@pytest.fixture(scope="module")
def client(go_env, tmp_path_factory) -> Path:
    go, env = go_env
    binary = tmp_path_factory.mktemp("go") / "openim-conformance"
    r = subprocess.run([go, "build", "-o", str(binary), "./cmd/openim-conformance"], cwd=CONFORMANCE, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProc]:
    cfg = tmp_path_factory.mktemp("cfg") / "scriptgate.toml"
    cfg.write_text(f'[commands.{CLOSED}]\nfailure_policy = "closed"\n')
    srv = start_server("--config", str(cfg))
    yield srv
    srv.stop()


def test_go_mirror_own_tests(go_env):
    """The Go client's own tests (URL building, headers, Parse, nil dereferences) and gofmt.
    go vet is left to conformance/README.md's manual run: cold, it costs more than the rest."""
    go, env = go_env
    r = subprocess.run([go, "test", "-vet=off", "./..."], cwd=CONFORMANCE, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    gofmt = Path(go).resolve().parent / "gofmt"
    if gofmt.exists():
        r = subprocess.run([str(gofmt), "-l", "."], cwd=CONFORMANCE, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == "", f"not gofmt-formatted: {r.stdout}{r.stderr}"


def run_client(binary: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = subprocess.run([str(binary)], input=json.dumps(cases).encode(), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def set_script(server: ServerProc, command: str, source: str | None) -> None:
    if source is None:
        r = server.request("DELETE", f"/admin/scripts/{command}")
        assert r.status in (200, 204, 404), (command, r.status, r.body)
    else:
        r = server.upload(command, source)
        # 200 "unchanged": that source is live already (a re-upload makes no version)
        assert r.status == 201 or (r.status == 200 and r.json().get("unchanged")), f"upload for {command} refused: {r.status} {r.body.decode()[:500]}\n{source}"


def run_cases(client: Path, server: ServerProc, cases: list[Case]) -> tuple[int, list[str]]:
    """Run the cases phase by phase; return the number of outcomes and one text per mismatch."""
    failures: list[str] = []
    total = 0
    ran_expected: dict[str, int] = {}
    for index, members in enumerate(phases(cases)):
        for command, source in {c.command: c.script for c in members}.items():
            set_script(server, command, source)
        batch, by_id = [], {}
        for n, case in enumerate(members):
            for line in case.lines:
                cid = f"p{index}.{n} {line} {case.command}: {case.id}"
                by_id[cid] = (case, line)
                batch.append({"id": cid, "line": line, "command": case.command,
                              "url": f"http://127.0.0.1:{server.port}{case.url}",
                              "operationID": f"conf-{index}-{n}", "input": case.input or {}})
        for outcome in run_client(client, batch):
            case, line = by_id[outcome["id"]]
            total += 1
            if case.expect.get("ran") and outcome["sent"]:
                ran_expected[case.command] = ran_expected.get(case.command, 0) + 1
            problems = compare(case, line, outcome)
            if problems:
                failures.append(
                    f"- {outcome['id']}\n    " + "\n    ".join(problems)
                    + f"\n    url: {outcome.get('url', '')}\n    reply: {outcome.get('reply', '')[:400]}"
                )
    for command, count in sorted(ran_expected.items()):
        r = server.request("GET", f"/admin/kv/ran:{command}")
        got = int(r.json()["value"]) if r.status == 200 else 0
        if got != count:
            failures.append(f"- {command}: the after script ran {got} times, expected {count}")
    return total, failures


def report(total: int, failures: list[str]) -> None:
    if failures:
        pytest.fail(f"{len(failures)} of {total} OpenIM outcomes differ:\n" + "\n".join(failures), pytrace=False)


def test_client_covers_the_catalogue(client):
    lines = json.loads(subprocess.run([str(client), "-list"], capture_output=True, check=True).stdout)
    assert sorted(lines[MAIN]) == sorted(catalog().commands)
    assert len(lines[MAIN]) == 52 and len(lines[V38]) == 47
    assert set(lines[MAIN]) - set(lines[V38]) == MAIN_ONLY
    marked = {name: spec.get("scriptgate", {}).get("openim_lines") for name, spec in catalogue().items()}
    if any(marked.values()):  # the catalogue says which OpenIM line sends which command
        assert {name for name, on in marked.items() if V38 in (on or LINES)} == set(lines[V38])


def test_openim_conformance(client, server):
    server.admin("PUT", "/admin/kv/blocklist:users", {"type": "set", "value": ["u2", "u9999"]})
    report(*run_cases(client, server, all_cases()))


# Scripts whose mistake is visible in the source: refused at upload (422 with line and column).
UPLOAD_REFUSED = [
    ("M2 literal deny(99)", "callbackBeforeAddBlackCommand", 'return deny(99, "x")', "99"),
    ("M2 literal deny(0)", "callbackBeforeAddBlackCommand", 'return deny(0, "x")', ""),
    ("M2 literal deny(2**31)", "callbackBeforeAddBlackCommand", 'return deny(2147483648, "x")', ""),
    ("M3 roleLevel=1.0", MEMBER, "return allow(roleLevel=1.0)", "roleLevel"),
    ("M3 roleLevel=True", MEMBER, "return allow(roleLevel=True)", "roleLevel"),
    ("M3 roleLevel=2**31", MEMBER, "return allow(roleLevel=2147483648)", "roleLevel"),
    ("M3 isPinned=1", "callbackBeforeCreateSingleChatConversationsCommand", "return allow(isPinned=1)", "isPinned"),
    ("M3 muteEndTime=2**63", JOIN,
     'return allow(memberCallbackList=[{"userID": "u2", "muteEndTime": 9223372036854775808}])', "muteEndTime"),
    ("M3 ex on a reject-only command", "callbackBeforeAddFriendAgreeCommand", 'return allow(ex="x")', "ex"),
    ("M3 notification on setGroupInfo", "callbackBeforeSetGroupInfoCommand", 'return allow(notification="x")',
     "notification"),
    ("M3 dict literal with nextCode", "callbackBeforeImportFriendsCommand", 'return {"nextCode": 1}', "nextCode"),
    ("M4 ex in beforeUpdateUserInfoEx", USER_EX, 'return allow(ex="x")', "ex"),
    ("M6 offlinePushInfo in beforeMsgModify", MODIFY, 'return allow(offlinePushInfo={"title": "t"})',
     "offlinePushInfo"),
]


def test_upload_refuses_what_can_be_caught(server):
    # A wrong-case name works (OpenIM's decoder ignores case, ScriptGate sends nickName): a warning.
    r = server.upload(MEMBER, script('return allow(nickname="x")'), activate=False)
    assert r.status == 201 and "did you mean nickName" in r.body.decode(), r.body
    wrong = []
    for what, command, body, needle in UPLOAD_REFUSED:
        r = server.upload(command, script(body), activate=False)
        text = r.body.decode()
        if r.status != 422 or needle not in text or "line 2" not in text:
            wrong.append(f"- {what}: {r.status} {text[:300]}")
    if wrong:
        pytest.fail("accepted at upload or refused without a useful message:\n" + "\n".join(wrong), pytrace=False)


def test_refused_members_option_is_not_applied_by_either_line(client, tmp_path):
    """invite_narrowing = "refused_members" answers continue + refusedMembersAccount, for OpenIM
    versions that apply it: neither modelled line does, so every invitee joins."""
    cfg = tmp_path / "scriptgate.toml"
    cfg.write_text(f'[commands.{INVITE}]\ninvite_narrowing = "refused_members"\n')
    srv = start_server("--config", str(cfg))
    try:
        narrowing = script('return allow(invitedUserIDs=[u for u in req["invitedUserIDs"] if u != "u3"])')
        case = Case("refused_members", INVITE, narrowing, {}, input={"invitedUserIDs": ["u1", "u2", "u3"]})
        total, failures = run_cases(client, srv, [case])
        report(total, failures)
        set_script(srv, INVITE, narrowing)
        batch = [{"id": "r", "line": MAIN, "command": INVITE, "url": f"http://127.0.0.1:{srv.port}/callbackExample",
                  "input": {"invitedUserIDs": ["u1", "u2", "u3"]}}]
        reply = json.loads(run_client(client, batch)[0]["reply"])
        assert reply.get("refusedMembersAccount") == ["u3"], reply
    finally:
        srv.stop()
