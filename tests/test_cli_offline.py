"""``scriptgate run / replay / check`` offline, and ``push / export / kv-snapshot`` against a
real ``scriptgate serve`` process, through the command line entry point."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.cli.main import main
from server.offline.env import load_snapshot
from tests.gojson import go_headers
from tests.server_proc import ROOT, free_port, start_server
from tests.timing import FAR_S

INVITE = "callbackBeforeInviteJoinGroupCommand"
FRIEND = "callbackBeforeAddFriendCommand"
GROUP_INFO = "callbackBeforeSetGroupInfoCommand"
ACK = {"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0}

BLOCKLIST = """
def handle(req):
    ids = req["invitedUserIDs"]
    flags = kv.smismember("blocklist:users", ids)
    blocked = [u for u, b in zip(ids, flags) if b]
    if blocked and len(blocked) == len(ids):
        return deny(5001, "invitation refused", ", ".join(blocked))
    if blocked:
        log("dropping", blocked)
        return allow(invitedUserIDs=[u for u, b in zip(ids, flags) if not b])
    return allow()
"""


def invite(ids: list[str], op: str = "op") -> dict[str, Any]:
    return {"callbackCommand": INVITE, "operationID": op, "groupID": "g", "reason": "", "invitedUserIDs": ids}


def cli(capsys, *argv: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / f"{INVITE}.py"
    path.write_text(BLOCKLIST)
    return path


@pytest.fixture
def snapshot(tmp_path) -> Path:
    path = tmp_path / "snap.json"
    path.write_bytes(orjson.dumps({"namespace": "default", "keys": [
        {"key": "blocklist:users", "type": "set", "value": ["evil", "bad"], "ttl": None}]}))
    return path


# --- check -------------------------------------------------------------------------------

def test_check_the_ready_scripts(capsys):
    code, out, _ = cli(capsys, "check", str(ROOT / "scripts"))
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("checked ")


def test_check_errors_with_line_and_col_and_warnings(capsys, tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / f"{FRIEND}.py").write_text("def handle(req):\n    return req.__class__\n")
    (d / f"{GROUP_INFO}.py").write_text("def handle(req):\n    return allow(groupname='x')\n")
    (d / f"{INVITE}.py").write_text("def handle(req:\n")
    (d / "helper_notes.py").write_text("def handle(req):\n    return None\n")
    (d / "_private.py").write_text("this is skipped")
    code, out, _ = cli(capsys, "check", str(d))
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith(f"{d / FRIEND}.py:2:") and ": error: " in line for line in lines)
    assert any(line.startswith(f"{d / INVITE}.py:1:") and "syntax error" in line for line in lines)
    assert any(line.startswith(f"{d / GROUP_INFO}.py:2:") and ": warning: " in line and "groupName?" in line for line in lines)
    assert any("helper_notes.py:1:0: error: cannot tell the command" in line for line in lines)
    assert "_private" not in out
    assert lines[-1] == "checked 4 script(s): 1 ok, 3 error(s), 1 warning(s)"


def test_check_warnings_pass_unless_strict_and_json(capsys, tmp_path):
    f = tmp_path / "anything.py"
    f.write_text("def handle(req):\n    return allow(invitedUserIDs=[])\n")  # narrowing becomes a rejection
    assert cli(capsys, "check", str(f), "--command", INVITE)[0] == 0
    assert cli(capsys, "check", str(f), "--command", INVITE, "--strict")[0] == 1
    code, out, _ = cli(capsys, "check", str(f), "--command", INVITE, "--json")
    doc = orjson.loads(out)
    assert code == 0 and doc["warnings"] == 1 and doc["errors"] == 0 and doc["ok"] is True
    assert doc["files"][0]["command"] == INVITE and doc["files"][0]["warnings"][0]["line"] == 2


def test_check_literal_errors_and_the_openim_line(capsys, tmp_path):
    f = tmp_path / "anything.py"
    f.write_text("def handle(req):\n    return deny(42, 'x')\n")  # a deny OpenIM cannot use: refused
    code, out, _ = cli(capsys, "check", str(f), "--command", FRIEND)
    assert code == 1 and f"{f}:2:16: error: deny() errCode 42 is outside" in out
    conv = tmp_path / "callbackBeforeCreateGroupChatConversationsCommand.py"
    conv.write_text("def handle(req):\n    return allow(isPinned=True)\n")
    assert cli(capsys, "check", str(conv), "--strict")[0] == 0
    code, out, _ = cli(capsys, "check", str(conv), "--strict", "--openim", "v3.8")
    assert code == 1 and "warning: OpenIM v3.8 never sends" in out


def test_check_usage_errors_are_one_line_exit_2(capsys, tmp_path):
    code, _, err = cli(capsys, "check", str(tmp_path / "missing.py"))
    assert code == 2 and err.count("\n") == 1 and "no such file or directory" in err
    code, _, err = cli(capsys, "check", str(tmp_path), "--command", FRIEND)
    assert code == 2 and "single FILE" in err
    (tmp_path / "x.py").write_text("def handle(req): pass\n")
    code, _, err = cli(capsys, "check", str(tmp_path / "x.py"), "--command", "callbackNope")
    assert code == 2 and "unknown callbackCommand" in err


def test_check_non_utf8_is_an_error_with_a_line(capsys, tmp_path):
    f = tmp_path / f"{FRIEND}.py"
    f.write_bytes(b"def handle(req):\n    return '\xff'\n")
    code, out, _ = cli(capsys, "check", str(f))
    assert code == 1 and ":2: not UTF-8 text" in out


# --- run ---------------------------------------------------------------------------------

def test_run_prints_the_reply(capsys, tmp_path, script, snapshot):
    payload = tmp_path / "p.json"
    payload.write_bytes(orjson.dumps(invite(["a", "evil"])))
    code, out, err = cli(capsys, "run", str(script), "--payload", str(payload), "--kv", str(snapshot))
    assert code == 0
    # OpenIM ignores a narrowed invitedUserIDs: the narrowing is answered as a rejection
    assert orjson.loads(out) == {**ACK, "nextCode": 1, "errCode": 5001, "errMsg": "invitation refused",
                                 "errDlt": "refused: evil"}
    assert "log: dropping ['evil']" in err and "verdict: deny" in err


def test_run_json_stdin_and_recording_lines(capsys, monkeypatch, script, snapshot):
    line = orjson.dumps({"command": INVITE, "request": invite(["evil"]), "verdict": "allow", "reply": ACK})
    code, out, _ = cli(capsys, "run", str(script), "--payload", "-", "--kv", str(snapshot), "--json",
                       stdin=line, monkeypatch=monkeypatch)
    doc = orjson.loads(out)
    assert code == 0 and doc["verdict"] == "deny" and doc["reply"]["nextCode"] == 1
    assert doc["reply"]["errCode"] == 5001 and doc["error"] is None and doc["kv_ops"] == 1


def test_run_script_errors_exit_2(capsys, tmp_path):
    payload = tmp_path / "p.json"
    payload.write_bytes(orjson.dumps(invite(["a"])))
    bad = tmp_path / "bad.py"
    bad.write_text("def handle(req):\n    return 1 // 0\n")
    code, out, err = cli(capsys, "run", str(bad), "--payload", str(payload))  # command from the payload
    assert code == 2 and orjson.loads(out) == ACK  # failure policy open: continue
    assert "script error (exception): ZeroDivisionError" in err
    invalid = tmp_path / "invalid.py"
    invalid.write_text("def handle(req):\n    return allow(groupID='x')\n")
    code, out, err = cli(capsys, "run", str(invalid), "--payload", str(payload))
    assert code == 2 and "invalid_result" in err
    refused = tmp_path / "refused.py"
    refused.write_text("import os\ndef handle(req):\n    return None\n")
    code, out, err = cli(capsys, "run", str(refused), "--payload", str(payload))
    assert code == 2 and out == "" and f"{refused}:1:" in err


def test_run_bad_inputs(capsys, tmp_path, script):
    p = tmp_path / "p.json"
    p.write_text("{nope")
    assert "not valid JSON" in cli(capsys, "run", str(script), "--payload", str(p))[2]
    p.write_text("[]")
    assert "must be a JSON object" in cli(capsys, "run", str(script), "--payload", str(p))[2]
    p.write_bytes(orjson.dumps({**invite(["a"]), "invitedUserIDs": 5}))
    code, _, err = cli(capsys, "run", str(script), "--payload", str(p))
    assert code == 2 and "does not fit" in err
    p.write_bytes(orjson.dumps({"x": 1}))
    other = tmp_path / "other.py"
    other.write_text("def handle(req): pass\n")
    assert "cannot tell the command" in cli(capsys, "run", str(other), "--payload", str(p))[2]
    bad_snap = tmp_path / "s.json"
    bad_snap.write_text('{"keys": [{"key": "k", "type": "zset", "value": []}]}')
    p.write_bytes(orjson.dumps(invite(["a"])))
    code, _, err = cli(capsys, "run", str(script), "--payload", str(p), "--kv", str(bad_snap))
    assert code == 2 and "type must be one of" in err


# --- replay ------------------------------------------------------------------------------

def write_recordings(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def rec(ids: list[str], op: str, verdict: str = "allow", reply: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ts": 1.0, "command": INVITE, "operationID": op, "request": invite(ids, op), "reply": reply or ACK,
            "version": 1, "verdict": verdict, "error_kind": None, "error": None, "elapsed_ms": 0.3}


def test_replay_reports_changes_and_exits_1(capsys, tmp_path, script, snapshot):
    rows = [
        rec(["a"], "op-same"),
        rec(["evil"], "op-123"),
        rec(["a", "bad"], "op-456", "modify", {**ACK, "invitedUserIDs": ["a", "bad"]}),
        rec(["a"], "op-789", "deny", {**ACK, "nextCode": 1, "errCode": 5001, "errMsg": "x"}),
    ]
    f = write_recordings(tmp_path / "recordings.ndjson", rows)
    code, out, err = cli(capsys, "replay", str(script), "--recordings", str(f), "--kv", str(snapshot))
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[:3] == [
        'op-123  allow -> deny  (errCode 5001 "invitation refused" "evil")',
        'op-456  modify -> deny  (errCode 5001 "invitation refused" "refused: bad")',
        "op-789  deny -> allow",
    ]
    assert "result: 3 of 4 replies would change (exit 1)" in out
    assert "(recorded with v1: 4)" in out


def test_replay_corrupt_lines_and_other_commands(capsys, tmp_path, script, snapshot):
    rows = [rec(["a"], "op-1"), b"{broken", rec(["a"], "op-2"),
            {"command": FRIEND, "request": {"callbackCommand": FRIEND}, "verdict": "allow", "reply": ACK}]
    f = write_recordings(tmp_path / "recordings.ndjson", rows)
    code, out, err = cli(capsys, "replay", str(script), "--recordings", str(f), "--kv", str(snapshot))
    assert code == 2
    assert "recordings.ndjson:2: not valid JSON" in err
    assert "records of other commands were skipped" in out and f"{FRIEND}: 1" in out
    assert "result: 1 corrupt lines; 0 of 2 replies would change (exit 2)" in out


def test_replay_unchanged_exits_0_json_and_quiet(capsys, tmp_path, script, snapshot):
    f = write_recordings(tmp_path / "r.ndjson", [rec(["a"], f"op-{i}") for i in range(50)])
    code, out, _ = cli(capsys, "replay", str(script), "--recordings", str(f), "--kv", str(snapshot), "-q")
    assert code == 0 and "result: 0 of 50 replies would change (exit 0)" in out
    code, out, _ = cli(capsys, "replay", str(script), "--recordings", str(f), "--json")
    doc = orjson.loads(out)
    assert code == 0 and doc["summary"]["replayed"] == 50 and doc["exit_code"] == 0 and doc["changes"] == []


def test_replay_new_errors_exit_2_but_old_errors_do_not(capsys, tmp_path):
    s = tmp_path / "s.py"
    s.write_text("def handle(req):\n    if 'x' in req['invitedUserIDs']:\n        return 1 // 0\n")
    old_error = {**rec(["x"], "op-e", "error"), "error_kind": "exception"}
    f = write_recordings(tmp_path / "r.ndjson", [old_error, rec(["a"], "op-a")])
    code, out, _ = cli(capsys, "replay", str(s), "--recordings", str(f), "--command", INVITE)
    assert code == 0 and "errors (also when recorded)" in out
    f = write_recordings(tmp_path / "r2.ndjson", [rec(["x"], "op-new")])
    code, out, _ = cli(capsys, "replay", str(s), "--recordings", str(f), "--command", INVITE)
    assert code == 2 and "op-new  allow -> error  (exception: ZeroDivisionError" in out


def test_replay_progress_bar_on_request(capsys, tmp_path, script):
    f = write_recordings(tmp_path / "r.ndjson", [rec(["a"], f"op-{i}") for i in range(20)])
    _, _, err = cli(capsys, "replay", str(script), "--recordings", str(f), "--progress")
    assert "20/20 100%" in err
    _, _, err = cli(capsys, "replay", str(script), "--recordings", str(f))
    assert "100%" not in err  # stderr is not a terminal


def test_replay_setup_errors(capsys, tmp_path, script):
    code, _, err = cli(capsys, "replay", str(script), "--recordings", str(tmp_path / "none.ndjson"))
    assert code == 2 and "cannot read" in err
    empty = write_recordings(tmp_path / "empty.ndjson", [])
    code, out, _ = cli(capsys, "replay", str(script), "--recordings", str(empty))
    assert code == 2 and "nothing was replayed" in out
    s = tmp_path / "s.py"
    s.write_text("def handle(req): pass\n")
    mixed = write_recordings(tmp_path / "m.ndjson", [rec(["a"], "1"), {"request": {"callbackCommand": FRIEND}}])
    code, _, err = cli(capsys, "replay", str(s), "--recordings", str(mixed))
    assert code == 2 and "several commands" in err and "--command" in err


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = capsys.readouterr().out
    assert "Exit status:" in out and "0  every reply is unchanged" in out


def test_entry_point_as_main_module(tmp_path):
    """``python -m server.cli`` (server.cli.main is __main__): errors are still one line."""
    r = subprocess.run([sys.executable, "-m", "server.cli", "check", str(tmp_path / "nope")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("scriptgate: ") and r.stderr.count("\n") == 1


# --- against a running server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    srv = start_server("--record")
    yield srv
    srv.stop()


def remote(srv) -> list[str]:
    return ["--server", f"http://127.0.0.1:{srv.port}", "--token", srv.token]


def test_push_uploads_changed_scripts_only(capsys, tmp_path, server):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / f"{FRIEND}.py").write_text("def handle(req):\n    return deny(5001, 'v1')\n")
    (d / f"{INVITE}.py").write_text(BLOCKLIST)
    code, out, _ = cli(capsys, "push", str(d), "--dry-run", *remote(server))
    assert code == 0 and out.count("would upload") == 2
    assert server.request("GET", f"/admin/scripts/{FRIEND}").status == 404
    code, out, _ = cli(capsys, "push", str(d), *remote(server))
    assert code == 0 and out.count("uploaded v") == 2, out
    assert "ignores invitedUserIDs" in out  # lint warnings are shown, not blocking
    assert server.callback(FRIEND, {"callbackCommand": FRIEND}).json()["errMsg"] == "v1"
    (d / f"{FRIEND}.py").write_text("def handle(req):\n    return deny(5001, 'v2')\n")
    code, out, _ = cli(capsys, "push", str(d), *remote(server))
    assert code == 0 and f"{INVITE}: unchanged" in out and f"{FRIEND}: uploaded" in out
    assert server.callback(FRIEND, {"callbackCommand": FRIEND}).json()["errMsg"] == "v2"
    audit = server.request("GET", "/admin/audit").json()["entries"]
    assert any(e["actor"].split("@")[0].endswith("-cli") for e in audit)


def test_push_refuses_everything_when_one_script_is_invalid(capsys, tmp_path, server):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / f"{GROUP_INFO}.py").write_text("def handle(req):\n    return allow(groupID=req['groupID'])\n")
    (d / f"{FRIEND}.py").write_text("def handle(req):\n    return req._secret\n")
    code, out, err = cli(capsys, "push", str(d), *remote(server))
    assert code == 1 and "nothing uploaded: 1 error(s)" in err and f"{FRIEND}.py:2:" in out
    assert server.request("GET", f"/admin/scripts/{GROUP_INFO}").status == 404


def test_push_draft_and_strict(capsys, tmp_path, server):
    f = tmp_path / "x.py"
    f.write_text("def handle(req):\n    return allow(groupID=req['groupID'], groupName='n')\n")
    code, out, _ = cli(capsys, "push", str(f), "--command", GROUP_INFO, "--draft", *remote(server))
    assert code == 0 and "(draft," in out
    assert server.request("GET", f"/admin/scripts/{GROUP_INFO}").status == 404  # not live
    f.write_text("def handle(req):\n    return allow(groupname='n')\n")
    code, _, err = cli(capsys, "push", str(f), "--command", GROUP_INFO, "--strict", *remote(server))
    assert code == 1 and "--strict" in err


def test_client_errors_are_one_line(capsys, tmp_path, server, monkeypatch):
    f = tmp_path / f"{FRIEND}.py"
    f.write_text("def handle(req): pass\n")
    code, _, err = cli(capsys, "push", str(f), "--server", f"http://127.0.0.1:{server.port}", "--token", "wrong")
    assert code == 2 and "unauthorized" in err and err.count("\n") == 1
    monkeypatch.delenv("SCRIPTGATE_ADMIN_TOKEN", raising=False)
    code, _, err = cli(capsys, "export", "--server", f"http://127.0.0.1:{server.port}")
    assert code == 2 and "no admin token" in err
    code, _, err = cli(capsys, "kv-snapshot", "--server", f"http://127.0.0.1:{free_port()}", "--token", "t")
    assert code == 2 and "cannot reach" in err
    code, _, err = cli(capsys, "export", "--server", "ftp://x", "--token", "t")
    assert code == 2 and "http(s) URL" in err
    monkeypatch.setenv("SCRIPTGATE_ADMIN_TOKEN", server.token)  # the default token source
    code, _, err = cli(capsys, "export", FRIEND, "--since", "soon", "--server", f"http://127.0.0.1:{server.port}")
    assert code == 2 and "--since" in err


def test_kv_snapshot_pages_and_reports_unreadable_keys(capsys, server, monkeypatch):
    import server.offline.remote as co

    ns = "snappages"
    for i in range(7):
        assert server.admin("PUT", f"/admin/kv/k{i}?namespace={ns}", {"value": str(i)}).status == 200
    monkeypatch.setattr(co, "KV_PAGE", 2)  # force several pages through the cursor loop
    code, out, err = cli(capsys, "kv-snapshot", "--namespace", ns, *remote(server))
    doc = orjson.loads(out)
    assert code == 0 and doc["namespace"] == ns
    assert [(k["key"], k["value"]) for k in doc["keys"]] == [(f"k{i}", str(i)) for i in range(7)]
    # A key with '%' in its name: either snapshotted, or reported (never dropped silently).
    assert server.admin("PUT", f"/admin/kv/{ns}%25x?namespace={ns}", {"value": "p"}).status == 200
    listed = [k["key"] for k in server.request("GET", f"/admin/kv?namespace={ns}&prefix={ns}").json()["keys"]]
    code, out, err = cli(capsys, "kv-snapshot", "--namespace", ns, "--prefix", ns, *remote(server))
    got = [k["key"] for k in orjson.loads(out)["keys"]]
    assert code == 0 and (got == listed or ("could not be read" in err and repr(listed[0]) in err))


def wait_recorded(srv, command: str, n: int) -> None:
    deadline = time.monotonic() + FAR_S
    while time.monotonic() < deadline:
        body = srv.request("GET", f"/admin/recordings/{command}?limit=100000").body
        if body.count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError("recordings did not arrive")


def test_export_kv_snapshot_and_replay_gate(capsys, tmp_path, server):
    """The whole loop: record live traffic, export it, snapshot the KV, and gate a new
    script version on the replay's exit code."""
    assert server.upload(INVITE, "def handle(req):\n    return allow()\n").status == 201
    members = server.admin("POST", "/admin/kv/blocklist:users/members", {"add": ["evil"]})
    assert members.status == 200
    assert server.admin("PUT", "/admin/kv/limits%2Fdaily", {"value": {"a": "1"}, "type": "hash"}).status == 200
    assert server.admin("PUT", "/admin/kv/motd", {"value": "hi", "ttl": 3600}).status == 200
    for i, ids in enumerate((["a"], ["evil"], ["b", "evil"], ["c"])):
        server.callback(INVITE, invite(ids, f"live-{i}"), headers=go_headers(f"live-{i}"))
    wait_recorded(server, INVITE, 4)

    out_file = tmp_path / "recordings.ndjson"
    code, _, err = cli(capsys, "export", INVITE, "-o", str(out_file), "--since", "1h", *remote(server))
    assert code == 0 and f"to {out_file}" in err
    lines = out_file.read_bytes().splitlines()
    assert len(lines) >= 4 and all(orjson.loads(x)["command"] == INVITE for x in lines)
    assert not out_file.with_name(out_file.name + ".part").exists()

    code, _, err = cli(capsys, "export", "-o", str(tmp_path / "all.ndjson"), *remote(server))
    assert code == 0 and f"{INVITE}:" in err

    snap = tmp_path / "kv.json"
    code, _, err = cli(capsys, "kv-snapshot", "-o", str(snap), *remote(server))
    assert code == 0 and "key(s)" in err
    loaded = {k["key"]: k for k in load_snapshot(str(snap)).keys}
    assert loaded["blocklist:users"]["value"] == ["evil"] and loaded["blocklist:users"]["type"] == "set"
    assert loaded["limits/daily"] == {"key": "limits/daily", "type": "hash", "value": {"a": "1"}, "ttl": None}
    assert loaded["motd"]["value"] == "hi" and 0 < loaded["motd"]["ttl"] <= 3600
    code, out, _ = cli(capsys, "kv-snapshot", "--prefix", "motd", *remote(server))
    assert [k["key"] for k in orjson.loads(out)["keys"]] == ["motd"]

    candidate = tmp_path / f"{INVITE}.py"
    candidate.write_text(BLOCKLIST)
    code, out, _ = cli(capsys, "replay", str(candidate), "--recordings", str(out_file), "--kv", str(snap))
    assert code == 1, out
    assert 'live-1  allow -> deny  (errCode 5001 "invitation refused" "evil")' in out
    assert 'live-2  allow -> deny  (errCode 5001 "invitation refused" "refused: evil")' in out
    # Push it, record again, and the same replay against the new traffic is clean.
    assert cli(capsys, "push", str(candidate), *remote(server))[0] == 0
    since = time.time()
    for i, ids in enumerate((["a"], ["evil"], ["b", "evil"])):
        server.callback(INVITE, invite(ids, f"new-{i}"))
    wait_recorded(server, INVITE, len(lines) + 3)
    fresh = tmp_path / "fresh.ndjson"
    assert cli(capsys, "export", INVITE, "-o", str(fresh), "--since", str(since), *remote(server))[0] == 0
    code, out, _ = cli(capsys, "replay", str(candidate), "--recordings", str(fresh), "--kv", str(snap))
    assert code == 0, out



def test_replay_lines_in_record_order_and_totals_that_add_up(capsys, tmp_path, script, snapshot):
    """Issue 18: per-record lines in record order whatever --jobs, and the "allow -> deny" total
    names the transitions its lines show (modify -> deny counts there too)."""
    rows = []
    for i in range(40):
        if i % 2:
            rows.append(rec(["a", "evil"], f"op-{i:02d}", "modify", {**ACK, "invitedUserIDs": ["a", "evil"]}))
        else:
            rows.append(rec(["evil"], f"op-{i:02d}"))
    f = write_recordings(tmp_path / "r.ndjson", rows)
    code, out, _ = cli(capsys, "replay", str(script), "--recordings", str(f), "--kv", str(snapshot),
                       "--jobs", "8", "--workers", "2")
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("op-")]
    assert [line.split()[0] for line in lines] == [f"op-{i:02d}" for i in range(40)]
    arrows = [" ".join(line.split()[1:4]) for line in lines]
    assert arrows.count("allow -> deny") == 20 and arrows.count("modify -> deny") == 20
    total = next(line for line in out.splitlines() if line.strip().startswith("allow -> deny") and "(" in line)
    assert total.split()[3:] == ["40", "(allow", "->", "deny:", "20,", "modify", "->", "deny:", "20)"]
    doc = orjson.loads(cli(capsys, "replay", str(script), "--recordings", str(f), "--kv", str(snapshot), "--json")[1])
    assert doc["summary"]["transitions"] == {"allow -> deny": 20, "modify -> deny": 20}
