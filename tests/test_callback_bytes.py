"""The exact bytes a real ``scriptgate serve`` answers on the callback path, pinned.

A table of raw requests (every outcome kind x a few commands, every refusal the callback
path makes, keep-alive and pipelining) is sent over raw sockets to a real server process;
each answer must equal the bytes in tests/golden/callback_replies.json (the ``Date`` value
blanked), including whether the server closed the connection afterwards. At the end the
counters the callbacks touched are pinned too. The golden file was written against the
code before the callback path was rewritten (issue #14: one callback path), so it proves
the rewrite answers byte for byte the same. When the HTTP/1.1 layer moved from Tornado's
parser to httptools (issue #17), two answers to malformed requests changed, on purpose: the
parser's reason in ``message``, and a non-numeric ``Content-Length`` is now the parser's
``bad_http`` rather than the handler's ``bad_request``; every other byte stayed the same.

``SCRIPTGATE_WRITE_GOLDEN=1 pytest tests/test_callback_bytes.py`` rewrites the file: only do
that for an intended change of the wire format, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.server_proc import ServerProc, start_server

GOLDEN = Path(__file__).parent / "golden" / "callback_replies.json"
WRITE = os.environ.get("SCRIPTGATE_WRITE_GOLDEN") == "1"

INVITE = "callbackBeforeInviteJoinGroupCommand"  # open policy, checked against the request
FRIEND = "callbackBeforeAddFriendCommand"  # closed policy
GROUP = "callbackBeforeSetGroupInfoCommand"  # echoes groupID & co.
AFTER = "callbackAfterSendSingleMsgCommand"  # an after-callback: always a plain ack
NONE = "callbackBeforeSendSingleMsgCommand"  # no script
MAX_BODY = 2000
PREFIX = "/hook-7f3a9c"

CONFIG = f"""
body_timeout_s = 1.0
max_body_bytes = {MAX_BODY}
[commands.{INVITE}]
deadline_ms = 400
budgets.wall_ms = 300
[commands.{FRIEND}]
failure_policy = "closed"
reject_errcode = 5123
reject_errmsg = "closed by policy"
reject_errdlt = "policy"
deadline_ms = 400
budgets.wall_ms = 300
"""
GUARDED = f"""
path_prefix = "{PREFIX}"
allow_cidrs = ["10.0.0.0/8"]
trust_proxy = true
"""

# The behaviour is chosen by the body's operationID.
SCRIPT = """
def handle(req):
    op = req.get('operationID', '')
    if op == 'deny':
        return deny(5001, 'no', 'why')
    if op == 'deny99':
        return deny(len(req) * 0 + 99, 'low')
    if op == 'boom':
        return 1 / 0
    if op == 'loop':
        while True:
            pass
    if op == 'change':
        return allow(CHANGE)
    if op == 'bad':
        return allow(BAD)
    if op == 'narrow':
        return allow(NARROW)
    return allow()
"""
SCRIPTS = {
    INVITE: {"CHANGE": "invitedUserIDs=req['invitedUserIDs']", "BAD": "invitedUserIDs=req['groupID']",
             "NARROW": "invitedUserIDs=req['invitedUserIDs'][:1]"},
    FRIEND: {"CHANGE": "", "BAD": "**{'err' + 'Code': 3}", "NARROW": ""},
    GROUP: {"CHANGE": "groupName='renamed'", "BAD": "groupName=len(req) * 0 + 5", "NARROW": ""},
    AFTER: {"CHANGE": "", "BAD": "", "NARROW": ""},
}
GO_HEADERS = (b"Host: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n"
              b"Content-Type: application/json; charset=utf-8\r\nAccept-Encoding: gzip\r\n")


def post(path: str, body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1", op: str = "op-7") -> bytes:
    return (b"POST " + path.encode() + b" " + version + b"\r\n" + GO_HEADERS + b"Operationid: " + op.encode()
            + b"\r\n" + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def body(command: str, op: str, **fields: Any) -> bytes:
    return orjson.dumps({"callbackCommand": command, "operationID": op, **fields}) + b"\n"


def invite(op: str) -> bytes:
    return body(INVITE, op, groupID="g1", reason="hi", invitedUserIDs=["u1", "u2"])


def friend(op: str) -> bytes:
    return body(FRIEND, op, fromUserID="a", toUserID="b", reqMsg="hello")


def group(op: str) -> bytes:
    return body(GROUP, op, groupID="g9", groupName="n", introduction="i")


def after(op: str) -> bytes:
    return body(AFTER, op, sendID="a", recvID="b", content="x")


def chunked(path: str, data: bytes) -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")


def bare(method: str, path: str, extra: bytes = b"") -> bytes:
    return method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def outcome_cases() -> list[tuple[str, bytes, int]]:
    cases = []
    for name, make, command in (("invite", invite, INVITE), ("friend", friend, FRIEND), ("group", group, GROUP),
                                ("after", after, AFTER)):
        for op in ("allow", "change", "deny", "deny99", "boom", "loop", "bad", "narrow"):
            if command == AFTER and op not in ("allow", "boom"):
                continue
            cases.append((f"{name}-{op}", post(f"/{command}", make(op), op=op), 1))
    cases.append(("no-script", post(f"/cb/{NONE}", body(NONE, "x", sendID="a")), 1))
    return cases


LARGE = b"{" + b" " * MAX_BODY + b"}"
REFUSAL_CASES: list[tuple[str, bytes, int]] = [
    ("invalid-json", post(f"/{INVITE}", b'{"groupID": '), 1),
    ("empty-body", post(f"/{INVITE}", b""), 1),
    ("invalid-utf8", post(f"/{INVITE}", b'{"groupID": "\xff\xfe"}'), 1),
    ("not-an-object", post(f"/{INVITE}", b"[1, 2]"), 1),
    ("invalid-field", post(f"/{INVITE}", b'{"invitedUserIDs": 5}'), 1),
    ("unknown-command", post("/callbackNope", b"{}"), 1),
    ("unknown-command-not-json", post("/callbackExample", b"not json"), 1),
    ("unknown-path-and-body", post("/callbackExample?x=1/callbackNopeCommand", body("callbackNopeCommand", "x")), 1),
    ("root", post("/", b"{}"), 1),
    ("command-from-body", post(f"/callbackExample?contenttype=json/{INVITE}", invite("allow")), 1),
    ("command-from-body-root", post(f"/?contenttype=json/{INVITE}", invite("deny")), 1),
    ("path-wins-over-body", post(f"/{GROUP}", invite("allow")), 1),
    ("query-string", post(f"/callbackExample/{INVITE}?x=1", invite("allow")), 1),
    ("admin-not-found", post(f"/admin/{INVITE}", b"{}"), 1),
    ("get", bare("GET", f"/{INVITE}"), 1),
    ("get-unknown", bare("GET", "/callbackNope"), 1),
    ("head", bare("HEAD", f"/{INVITE}"), 1),
    ("options", bare("OPTIONS", f"/{FRIEND}"), 1),
    ("put", bare("PUT", f"/{FRIEND}", b"Content-Length: 2\r\n") + b"{}", 1),
    ("trace", bare("TRACE", f"/{INVITE}"), 1),
    ("oversized", post(f"/{INVITE}", LARGE), 1),
    ("oversized-closed", post(f"/{FRIEND}", LARGE), 1),
    ("oversized-chunked", chunked(f"/{INVITE}", LARGE), 1),
    ("chunked", chunked(f"/{INVITE}", invite("deny")), 1),
    ("bad-content-length", bare("POST", f"/{INVITE}", b"Content-Length: abc\r\n"), 1),
    ("malformed", b"GARBAGE\r\n\r\n", 1),
    ("connection-close", post(f"/{INVITE}", invite("allow"), b"Connection: close\r\n"), 1),
    ("expect-100", post(f"/{INVITE}", invite("deny"), b"Expect: 100-continue\r\n"), 2),
    ("http-1.0-keep-alive", post(f"/{INVITE}", invite("deny"), b"Connection: keep-alive\r\n", b"HTTP/1.0"), 1),
    ("http-1.0", post(f"/{INVITE}", invite("allow"), b"", b"HTTP/1.0"), 1),
    ("pipelined", b"".join([
        post(f"/{INVITE}", invite("change")),
        post(f"/{INVITE}", b"not json"),
        post(f"/{GROUP}", group("change")),
        post(f"/{INVITE}", invite("deny"), b"Expect: 100-continue\r\n"),
        post(f"/{FRIEND}", friend("boom")),
        bare("GET", f"/{INVITE}"),
    ]), 7),
    ("healthz-post", post("/healthz", b"{}"), 1),
    ("metrics-no-token", bare("GET", "/metrics"), 1),
    ("admin-no-token", bare("GET", "/admin/scripts"), 1),
]
FORWARDED = b"X-Forwarded-For: 10.1.2.3\r\n"
GUARDED_CASES: list[tuple[str, bytes, int]] = [
    ("forbidden", post(f"{PREFIX}/{INVITE}", invite("deny")), 1),
    ("forwarded", post(f"{PREFIX}/{INVITE}", invite("deny"), FORWARDED), 1),
    ("forwarded-not-an-object", post(f"{PREFIX}/{INVITE}", b"[]", FORWARDED), 1),
    ("wrong-prefix", post(f"/hook-nope/{INVITE}", invite("deny"), FORWARDED), 1),
    ("prefix-no-slash", post(f"{PREFIX}{INVITE}", invite("deny"), FORWARDED), 1),
    ("prefix-and-base", post(f"{PREFIX}/base/{INVITE}", invite("deny"), FORWARDED), 1),
    ("forbidden-get", bare("GET", f"{PREFIX}/{INVITE}"), 1),
]
DATE = re.compile(rb"\r\nDate: [^\r]*")


def read_one(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One response from the socket (with ``buf`` holding what was read ahead)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if head.split(b" ", 2)[1:2] == [b"100"]:
        length = 0
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    buf[:] = rest[length:]
    return DATE.sub(b"\r\nDate: -", head) + b"\r\n\r\n" + rest[:length]


def exchange(port: int, raw: bytes, responses: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        buf = bytearray()
        got = []
        for _ in range(responses):
            one = read_one(sock, buf)
            if one is None:
                break
            got.append(one)
        sock.settimeout(0.15)
        try:
            closed = not buf and sock.recv(65536) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
    return {"responses": [r.decode("latin-1") for r in got], "closed": closed}


def start(config: str, tmp: Path) -> ServerProc:
    path = tmp / "c.toml"
    path.write_text(config)
    return start_server("--workers", "1", "--config", str(path))


def counters(server: ServerProc) -> list[str]:
    text = server.request("GET", "/metrics").body.decode()
    wanted = ("scriptgate_callbacks_total", "scriptgate_verdicts_total", "scriptgate_bad_requests_total",
              "scriptgate_command_source_total", "scriptgate_reply_fixes_total", "scriptgate_script_errors_total")
    return sorted(line for line in text.splitlines()
                  if line.startswith(wanted) and not line.startswith("#") and not line.endswith(" 0.0"))


def run_cases(server: ServerProc, cases: list[tuple[str, bytes, int]]) -> dict[str, Any]:
    return {name: exchange(server.port, raw, n) for name, raw, n in cases}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bytes")
    server = start(CONFIG, tmp)
    try:
        for command, names in SCRIPTS.items():
            source = SCRIPT
            for name, expr in names.items():
                source = source.replace(name, expr)
            assert server.upload(command, source).status == 201, command
        result = {"cases": run_cases(server, outcome_cases() + REFUSAL_CASES)}
        timeout = exchange(server.port, post(f"/{FRIEND}", friend("allow"))[:-10], 1)
        result["cases"]["body-timeout"] = timeout
        result["counters"] = counters(server)
    finally:
        server.stop()
    guarded = start(GUARDED + CONFIG, tmp_path_factory.mktemp("guarded"))
    try:
        result["guarded"] = run_cases(guarded, GUARDED_CASES)
        result["guarded_counters"] = counters(guarded)
    finally:
        guarded.stop()
    return result


def test_replies_are_the_pinned_bytes(observed: dict[str, Any]) -> None:
    if WRITE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(observed, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert observed["cases"].keys() == golden["cases"].keys()
    for name, want in golden["cases"].items():
        assert observed["cases"][name] == want, name
    for name, want in golden["guarded"].items():
        assert observed["guarded"][name] == want, name
    assert observed == golden


def test_the_table_covers_every_outcome(observed: dict[str, Any]) -> None:
    # A guard against a golden file that pins failures: each kind of answer is in it.
    bodies = {name: case["responses"][-1] if case["responses"] else "" for name, case in observed["cases"].items()}
    assert '"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}' in bodies["invite-allow"]
    assert '"invitedUserIDs":["u1","u2"]' in bodies["invite-change"]
    assert '"errCode":5001,"errMsg":"no","errDlt":"why","nextCode":1}' in bodies["invite-deny"]
    assert '"errCode":5123,"errMsg":"closed by policy"' in bodies["friend-boom"]
    assert '"errCode":5123' in bodies["friend-loop"] and '"nextCode":0}' in bodies["invite-loop"]
    assert '"code":"payload_too_large"' in bodies["oversized"]
    assert '"code":"unknown_command"' in bodies["unknown-command"]
    assert '"code":"invalid_json"' in bodies["invalid-json"]
    assert '"code":"body_timeout"' in bodies["body-timeout"]
    assert all(case["responses"] for case in observed["cases"].values())
