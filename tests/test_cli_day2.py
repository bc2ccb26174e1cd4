"""The day-2 CLI (``scriptgate scripts / kv / tail / tokens / completion``) against a real
``scriptgate serve`` process, plus re-uploading the live source (no new version).

``tail`` and ``tokens`` are clients of endpoints another part of the server provides
(/admin/logs/stream, /admin/tokens, see docs/admin-api.md): they are tested here against a
small stand-in that speaks the documented contract and records what the CLI sent."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.cli.day2 import format_record, sse_events
from server.cli.main import main
from tests.ports import free_port
from tests.server_proc import ROOT, ServerProc, start_server
from tests.timing import FAR_S, SLACK_S

FRIEND = "callbackBeforeAddFriendCommand"
ALLOW = "def handle(req):\n    return allow()\n"
DENY = "def handle(req):\n    log('no', req['fromUserID'])\n    return deny(5002, 'friend request refused')\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path: Path) -> None:
    for name in ("SCRIPTGATE_URL", "SCRIPTGATE_ADMIN_TOKEN", "SCRIPTGATE_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def sg(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def remote(server: ServerProc) -> list[str]:
    return ["--server", f"http://127.0.0.1:{server.port}", "--token", server.token]


def upload(server: ServerProc, command: str, source: str, activate: bool = True) -> dict[str, Any]:
    r = server.upload(command, source, activate)
    assert r.status in (200, 201), r.body
    return r.json()


# --- re-uploading the live source --------------------------------------------------------------

def test_reuploading_the_live_source_makes_no_version(server: ServerProc) -> None:
    command = "callbackBeforeSetFriendRemarkCommand"
    first = server.upload(command, ALLOW)
    assert first.status == 201
    again = server.upload(command, ALLOW)
    assert again.status == 200, again.body
    assert again.json() == {"command": command, "version": first.json()["version"], "sha256": first.json()["sha256"],
                            "active": True, "unchanged": True, "warnings": []}
    # a draft of the live source is no new version either
    assert server.upload(command, ALLOW, activate=False).json()["unchanged"] is True
    versions = server.admin("GET", f"/admin/scripts/{command}/versions").json()
    assert [v["version"] for v in versions["versions"]] == [first.json()["version"]]
    entries = server.admin("GET", "/admin/audit?limit=5").json()["entries"]
    latest = next(e for e in entries if e["target"] == command)
    assert latest["action"] == "upload" and latest["detail"]["unchanged"] is True
    assert latest["before"] == latest["after"] == first.json()["version"]
    # a different source is a new version again
    assert server.upload(command, DENY).status == 201


def test_push_says_unchanged(server: ServerProc, capsys, tmp_path: Path) -> None:
    command = "callbackBeforeUpdateUserInfoExCommand"
    path = tmp_path / f"{command}.py"
    path.write_text(ALLOW)
    assert sg(capsys, "push", str(path), *remote(server))[0] == 0
    code, out, _ = sg(capsys, "push", str(path), *remote(server))
    assert code == 0 and f"{command}: unchanged" in out


# --- scripts -----------------------------------------------------------------------------------

def test_scripts_ls_versions_show_diff_activate_rollback_delete(server: ServerProc, capsys) -> None:
    v1 = upload(server, FRIEND, ALLOW)["version"]
    v2 = upload(server, FRIEND, DENY)["version"]
    r = remote(server)

    code, out, _ = sg(capsys, "scripts", "ls", *r)
    assert code == 0 and FRIEND in out and f"v{v2}" in out
    code, out, _ = sg(capsys, "scripts", "ls", "--json", *r)
    assert any(s["command"] == FRIEND and s["active_version"] == v2 for s in orjson.loads(out)["scripts"])

    code, out, _ = sg(capsys, "scripts", "versions", FRIEND, *r)
    assert code == 0 and f"v{v1}" in out and "live" in out
    assert orjson.loads(sg(capsys, "scripts", "versions", FRIEND, "--json", *r)[1])["active_version"] == v2

    code, out, err = sg(capsys, "scripts", "show", FRIEND, *r)
    assert code == 0 and out == DENY and f"v{v2} (live" in err
    code, out, _ = sg(capsys, "scripts", "show", FRIEND, "--version", str(v1), *r)
    assert out == ALLOW
    assert orjson.loads(sg(capsys, "scripts", "show", FRIEND, "--json", *r)[1])["source"] == DENY

    code, out, _ = sg(capsys, "scripts", "diff", FRIEND, str(v1), "live", *r)
    assert code == 1, out
    assert "-    return allow()" in out and "+    return deny(5002, 'friend request refused')" in out
    assert sg(capsys, "scripts", "diff", FRIEND, f"v{v2}", "live", *r)[0] == 0
    doc = orjson.loads(sg(capsys, "scripts", "diff", FRIEND, str(v1), str(v2), "--json", *r)[1])
    assert doc["identical"] is False and doc["a"] == v1 and doc["b"] == v2 and doc["diff"].startswith("---")
    code, _, err = sg(capsys, "scripts", "diff", FRIEND, "99", "live", *r)
    assert code == 2 and "HTTP 404" in err

    code, out, _ = sg(capsys, "scripts", "rollback", FRIEND, *r)
    assert code == 0 and out.strip() == f"{FRIEND}: v{v1} is live (was v{v2})"
    code, out, _ = sg(capsys, "scripts", "activate", FRIEND, str(v2), "--json", *r)
    assert orjson.loads(out) == {"command": FRIEND, "active_version": v2, "previous_version": v1, "synced": True}
    code, _, err = sg(capsys, "scripts", "rollback", FRIEND, "--to", "99", *r)
    assert code == 2 and "no version 99" in err

    code, out, _ = sg(capsys, "scripts", "delete", FRIEND, *r)
    assert code == 0 and f"was v{v2}" in out
    assert server.admin("GET", f"/admin/scripts/{FRIEND}").status == 404
    code, _, err = sg(capsys, "scripts", "rollback", FRIEND, *r)
    assert code == 2 and "no live version" in err
    assert sg(capsys, "scripts", "activate", FRIEND, str(v2), *r)[0] == 0


def test_unknown_command_and_usage_errors(server: ServerProc, capsys) -> None:
    code, _, err = sg(capsys, "scripts", "show", "callbackNope", *remote(server))
    assert code == 2 and "unknown callbackCommand" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["scripts", "activate", FRIEND, "zero"])
    assert exc.value.code == 2


# --- kv ----------------------------------------------------------------------------------------

def test_kv_set_get_ls_members_del(server: ServerProc, capsys) -> None:
    r = [*remote(server), "--namespace", "clitest"]
    assert sg(capsys, "kv", "set", "config:limit", "50", "--ttl", "3600", *r)[0] == 0
    code, out, _ = sg(capsys, "kv", "get", "config:limit", *r)
    assert code == 0 and out == "50\n"
    assert sg(capsys, "kv", "set", "profile:u1", "name=Ann", "city=Oslo", "--type", "hash", *r)[0] == 0
    doc = orjson.loads(sg(capsys, "kv", "get", "profile:u1", "--json", *r)[1])
    assert doc["type"] == "hash" and doc["value"] == {"name": "Ann", "city": "Oslo"}
    assert sg(capsys, "kv", "set", "tags", '["a", "b"]', "--json-value", *r)[0] == 0
    assert orjson.loads(sg(capsys, "kv", "get", "tags", "--json", *r)[1])["type"] == "list"

    code, out, _ = sg(capsys, "kv", "members", "add", "blocklist:users", "u2", "u9", "u7", *r)
    assert code == 0 and out.strip() == "blocklist:users: 3 added, 3 member(s) now"
    code, out, _ = sg(capsys, "kv", "members", "remove", "blocklist:users", "u7", "--json", *r)
    assert orjson.loads(out)["removed"] == 1
    code, out, _ = sg(capsys, "kv", "get", "blocklist:users", *r)
    assert sorted(out.split()) == ["u2", "u9"]
    # a key with "/" and "%" is one key, not a path
    assert sg(capsys, "kv", "set", "odd/key%41", "x", *r)[0] == 0
    assert sg(capsys, "kv", "get", "odd/key%41", *r)[1] == "x\n"

    code, out, _ = sg(capsys, "kv", "ls", *r)
    assert code == 0 and "blocklist:users" in out and "set" in out
    listed = orjson.loads(sg(capsys, "kv", "ls", "--prefix", "profile:", "--json", *r)[1])
    assert [k["key"] for k in listed["keys"]] == ["profile:u1"]

    assert sg(capsys, "kv", "del", "config:limit", *r)[0] == 0
    code, _, err = sg(capsys, "kv", "del", "config:limit", *r)
    assert code == 2 and "HTTP 404" in err
    code, _, err = sg(capsys, "kv", "set", "k", "a", "b", *r)
    assert code == 2 and "exactly one VALUE" in err


# --- connection: exit 3, env, profiles ---------------------------------------------------------

def test_unreachable_server_and_refused_token_exit_3(server: ServerProc, capsys) -> None:
    code, _, err = sg(capsys, "scripts", "ls", "--server", f"http://127.0.0.1:{free_port()}", "--token", "t")
    assert code == 3 and "cannot reach" in err
    code, _, err = sg(capsys, "scripts", "ls", "--server", f"http://127.0.0.1:{server.port}", "--token", "wrong")
    assert code == 3 and "unauthorized" in err
    code, _, err = sg(capsys, "kv", "ls", "--server", f"http://127.0.0.1:{server.port}")
    assert code == 3 and "no admin token" in err


def test_server_and_token_from_env_and_profiles(server: ServerProc, capsys, monkeypatch, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.port}"
    monkeypatch.setenv("SCRIPTGATE_URL", url)
    monkeypatch.setenv("SCRIPTGATE_ADMIN_TOKEN", server.token)
    assert sg(capsys, "scripts", "ls")[0] == 0
    profiles = tmp_path / "config" / "scriptgate" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(f'[prod]\nserver = "{url}"\ntoken_env = "PROD_TOKEN"\n\n'
                        f'[broken]\nserver = "http://127.0.0.1:{free_port()}"\ntoken = "x"\n')
    profiles.chmod(0o600)
    monkeypatch.setenv("SCRIPTGATE_ADMIN_TOKEN", "not-this-one")
    monkeypatch.setenv("PROD_TOKEN", server.token)
    # an explicit profile wins over the environment...
    assert sg(capsys, "scripts", "ls", "--profile", "prod")[0] == 0
    monkeypatch.setenv("SCRIPTGATE_PROFILE", "broken")
    assert sg(capsys, "scripts", "ls")[0] == 3
    # ...and flags win over everything
    assert sg(capsys, "scripts", "ls", "--profile", "broken", *remote(server))[0] == 0
    code, _, err = sg(capsys, "scripts", "ls", "--profile", "nope")
    assert code == 2 and "no profile 'nope'" in err


# --- tail and tokens against a stand-in of the documented endpoints ----------------------------

RECORDS = [
    {"ts": "2026-01-01T00:00:00.000Z", "command": FRIEND, "operationID": "op-1", "version": 3, "verdict": "deny",
     "error_kind": None, "error": None, "logs": ["no user1"], "elapsed_ms": 1.25, "level": "info"},
    {"ts": "2026-01-01T00:00:01.000Z", "command": FRIEND, "operationID": "op-2", "version": 3, "verdict": "error",
     "error_kind": "exception", "error": "KeyError: 'x'", "logs": [], "elapsed_ms": 0.5, "level": "error"},
]


class Contract(http.server.BaseHTTPRequestHandler):
    """/admin/logs/stream and /admin/tokens as docs/admin-api.md describes them."""

    seen: list[tuple[str, str, bytes, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: Any) -> None:
        body = orjson.dumps(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append((self.command, self.path, self.rfile.read(length), self.headers.get("Authorization", "")))

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/admin/logs/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b": hello\n\n")
            for rec in RECORDS:
                self.wfile.write(b"data: " + orjson.dumps(rec) + b"\n\n")
            self.wfile.flush()
        elif self.path == "/admin/tokens":
            self._reply(200, {"tokens": [{"id": "t1", "name": "ci", "scopes": ["deploy"], "commands": [FRIEND],
                                          "namespaces": [], "created_at": "2026-01-01T00:00:00.000Z"}]})
        else:
            self._reply(404, {"error": "not_found", "message": "no such route"})

    def do_POST(self) -> None:
        self._record()
        doc = orjson.loads(self.seen[-1][2])
        self._reply(201, {"id": "t2", "token": "sgt_secret", "created_at": "2026-01-01T00:00:00.000Z",
                          "commands": [], "namespaces": [], **doc})

    def do_DELETE(self) -> None:
        self._record()
        self._reply(200, {"id": self.path.rsplit("/", 1)[1], "revoked": True})


@pytest.fixture
def contract() -> Iterator[str]:
    Contract.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Contract)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_tail_prints_callbacks_and_filters(contract: str, capsys) -> None:
    code, out, _ = sg(capsys, "tail", FRIEND, "--errors", "--operation-id", "op-2", "--max", "2",
                      "--server", contract, "--token", "tk")
    assert code == 0
    method, path, _, auth = Contract.seen[0]
    assert method == "GET" and auth == "Bearer tk"
    assert path == f"/admin/logs/stream?command={FRIEND}&operationID=op-2&errors=1"
    assert out.splitlines() == [
        f"2026-01-01T00:00:00.000Z  {FRIEND}  v3  op-1  deny  1.2 ms",
        "  | no user1",
        f"2026-01-01T00:00:01.000Z  {FRIEND}  v3  op-2  error  0.5 ms",
        "  ! exception: KeyError: 'x'",
    ]
    code, out, _ = sg(capsys, "tail", "--json", "--max", "1", "--server", contract, "--token", "tk")
    assert [orjson.loads(line) for line in out.splitlines()] == RECORDS[:1]
    # the server ending the stream is the server going away
    code, out, err = sg(capsys, "tail", "--server", contract, "--token", "tk")
    assert code == 3 and len(out.splitlines()) == 4 and "ended the log stream" in err


def test_tail_follows_the_live_server(server: ServerProc) -> None:
    """`scriptgate tail` against the real stream: callbacks are sent until the tail has seen
    one (the subscription's start is not observable from here, so no single send could be
    timed to it), then its NDJSON line is the callback's record."""
    upload(server, FRIEND, "def handle(req):\n    log('tail me')\n    return deny(5003, 'no')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "tail", FRIEND, "--max", "1", "--json",
                             *remote(server)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + FAR_S
        while proc.poll() is None and time.monotonic() < deadline:
            server.callback(FRIEND, {"fromUserID": "u1", "toUserID": "u2"}, headers={"operationID": "tail-op"})
            time.sleep(0.05)
        out, err = proc.communicate(timeout=SLACK_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    record = orjson.loads(out.splitlines()[0])
    assert record["command"] == FRIEND and record["verdict"] == "deny" and record["logs"] == ["tail me"]


def test_sse_parsing_follows_the_eventsource_rules() -> None:
    lines = [b": comment\n", b"event: log\n", b"data: {\"a\":\n", b"data:1}\r\n", b"\n", b"data: x\n"]
    assert list(sse_events(iter(lines))) == ['{"a":\n1}', "x"]
    assert format_record({"command": "c", "verdict": "allow"}) == ["c  -  -  allow"]


def test_tokens_create_ls_revoke(contract: str, capsys) -> None:
    r = ["--server", contract, "--token", "tk"]
    code, out, err = sg(capsys, "tokens", "create", "ci", "--scope", "deploy", "--command", FRIEND, *r)
    assert code == 0 and out == "sgt_secret\n" and "shown only now" in err
    assert orjson.loads(Contract.seen[-1][2]) == {"name": "ci", "scopes": ["deploy"], "commands": [FRIEND]}
    code, out, _ = sg(capsys, "tokens", "ls", *r)
    assert code == 0 and "t1" in out and "deploy" in out and "sgt_" not in out
    assert orjson.loads(sg(capsys, "tokens", "ls", "--json", *r)[1])["tokens"][0]["id"] == "t1"
    code, out, _ = sg(capsys, "tokens", "revoke", "t1", *r)
    assert code == 0 and Contract.seen[-1][:2] == ("DELETE", "/admin/tokens/t1")
    with pytest.raises(SystemExit):
        main(["tokens", "create", "x", "--scope", "root"])


# --- completion and the installed entry point --------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(capsys, shell: str) -> None:
    code, out, _ = sg(capsys, "completion", shell)
    assert code == 0 and "_SCRIPTGATE_COMPLETE" in out


def test_completion_completes_subcommands() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_SCRIPTGATE_COMPLETE": "bash_complete",
           "COMP_WORDS": "scriptgate scripts ro", "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-m", "server.cli"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert "plain,rollback" in done.stdout.split("\n"), done.stdout + done.stderr


def test_tokens_create_ls_revoke_on_the_live_server(server: ServerProc, capsys) -> None:
    """The tokens commands against the real /admin/tokens: the created secret works with its
    scope only, the list never shows it, and a revoked token is refused."""
    code, out, err = sg(capsys, "tokens", "create", "cli-live", "--scope", "read", *remote(server))
    assert code == 0 and "shown only now" in err
    secret = out.strip()
    reader = ["--server", f"http://127.0.0.1:{server.port}", "--token", secret]
    assert sg(capsys, "scripts", "ls", *reader)[0] == 0  # read scope: allowed
    code, _, err = sg(capsys, "kv", "set", "from-reader", "x", *reader)
    assert code == 3 and "lacks the 'kv-write' scope" in err  # kv-write: refused
    listed = orjson.loads(sg(capsys, "tokens", "ls", "--json", *remote(server))[1])["tokens"]
    mine = [t for t in listed if t["name"] == "cli-live"]
    assert len(mine) == 1 and secret not in orjson.dumps(listed).decode()
    assert sg(capsys, "tokens", "revoke", mine[0]["id"], *remote(server))[0] == 0
    assert sg(capsys, "scripts", "ls", *reader)[0] == 3  # the token is refused now
