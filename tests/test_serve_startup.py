"""``scriptgate serve`` start-up as an operator sees it on stderr: an unreachable store is
loud and retried until it comes up, ``--scripts`` is one summary line, "ready" comes once
per HTTP process and only once the scripts are live, a bad script stops the start.

Every test runs a real ``scriptgate serve`` process and awaits its stderr lines."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from redis import exceptions as rex

from server.store.errors import reason
from tests.ports import free_port
from tests.redis_servers import RedisProcess
from tests.server_proc import ServerProc, launch_server, start_server

FRIEND = "callbackBeforeAddFriendCommand"
INVITE = "callbackBeforeInviteJoinGroupCommand"
PASSWORD = "s3cret-pw"
READY = r"scriptgate: ready on http://127\.0\.0\.1:\d+ \(pid \d+, store: .*, (\d+) live scripts?\)"


def scripts_dir(root: Path) -> Path:
    directory = root / "scripts"
    directory.mkdir()
    (directory / f"{FRIEND}.py").write_text("def handle(req):\n    return deny(5101, 'friend v1')\n")
    (directory / f"{INVITE}.py").write_text("def handle(req):\n    return deny(5102, 'invite v1')\n")
    return directory


def stop(server: ServerProc) -> None:
    assert server.stop() == 0, "".join(server.output)


@pytest.mark.parametrize("workers", [1, 2])
def test_unreachable_store_is_loud_then_recovers(tmp_path: Path, workers: int) -> None:
    redis = RedisProcess(tmp_path / "redis", free_port(), password=PASSWORD)  # not started: the port is closed
    try:
        recovers(tmp_path, workers, redis)
    finally:
        redis.stop()


def recovers(tmp_path: Path, workers: int, redis: RedisProcess) -> None:
    directory = scripts_dir(tmp_path)
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}"
    masked = re.escape(f"redis://:***@127.0.0.1:{redis.port}")
    server = launch_server("--redis", url, "--scripts", str(directory), "--workers", str(workers),
                           "--sandbox-workers", "1")
    try:
        server.wait_line(rf"^scriptgate: store {masked} unreachable \(Connection refused\); "
                         r"retrying in 1s \(attempt 1\)$")
        server.wait_line(rf"^scriptgate: store {masked} unreachable \(Connection refused\); "
                         r"retrying in 2s \(attempt 2\)$")
        redis.start()
        server.wait_line(rf"^scriptgate: store {masked} is reachable \(after \d+ failed attempts\)$")
        loaded = server.wait_line(rf"^scriptgate: loaded 2 scripts from {re.escape(str(directory))} "
                                  r"\(2 new versions, 0 unchanged\)$")
        assert loaded
        server.wait_line(READY, start=server.index("scriptgate: loaded") + 1, count=workers)
        with server.changed:
            out = list(server.output)
        assert PASSWORD not in "".join(out)
        # one set of retry lines and one summary for the whole server, however many processes
        attempts = [int(m.group(1)) for line in out if (m := re.search(r"\(attempt (\d+)\)$", line))]
        assert attempts == list(range(1, len(attempts) + 1))
        assert sum("scriptgate: loaded" in line for line in out) == 1
        ready = [line for line in out if "ready on" in line]
        assert len(ready) == workers and all(re.search(READY, line).group(1) == "2" for line in ready)
        assert not any("live scripts:" in line for line in out), "a line per process for the first load"
        # "ready" means serving the scripts
        assert server.callback(FRIEND, {}).json()["errCode"] == 5101
        assert server.callback(INVITE, {}).json()["errCode"] == 5102
    finally:
        stop(server)
    # a second start with the same scripts uploads nothing
    again = start_server("--redis", url, "--scripts", str(directory), "--sandbox-workers", "1")
    try:
        assert again.index(r"loaded 2 scripts from .* \(0 new versions, 2 unchanged\)$") < again.index("ready on")
        assert not any(" unreachable (" in line for line in again.output), "".join(again.output)
    finally:
        stop(again)


def test_ready_comes_after_the_scripts_with_the_embedded_store(tmp_path: Path) -> None:
    server = start_server("--scripts", str(scripts_dir(tmp_path)), "--sandbox-workers", "1")
    try:
        assert server.index(r"^scriptgate: loaded 2 scripts from .* \(2 new versions, 0 unchanged\)$") \
            < server.index(READY)
        assert re.search(READY, server.output[server.index(READY)]).group(1) == "2"
        assert server.callback(FRIEND, {}).json()["errCode"] == 5101
    finally:
        stop(server)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_script_stops_the_start_with_a_clear_line(tmp_path: Path, workers: int) -> None:
    directory = scripts_dir(tmp_path)
    (directory / f"{FRIEND}.py").write_text("def handle(req):\n    return req.__class__\n")
    (directory / "helpers.py").write_text("X = 1\n")
    server = launch_server("--scripts", str(directory), "--workers", str(workers), "--sandbox-workers", "1")
    assert server.proc.wait(timeout=60) == 1
    server.wait_line(r"nothing loaded")
    out = "".join(server.output)
    assert f"scriptgate: --scripts: skipped {directory / 'helpers.py'}: not named after a callbackCommand\n" in out
    assert re.search(rf"^scriptgate: {re.escape(str(directory / FRIEND))}\.py:2:\d+: .*__class__", out, re.M)
    assert out.rstrip("\n").endswith(f"scriptgate: --scripts {directory}: nothing loaded (1 invalid script)")
    assert "ready on" not in out and "Traceback" not in out


def test_missing_scripts_directory(tmp_path: Path) -> None:
    server = launch_server("--scripts", str(tmp_path / "nope"), "--sandbox-workers", "1")
    assert server.proc.wait(timeout=60) == 1
    server.wait_line("no such directory")
    assert server.output[-1] == f"scriptgate: --scripts {tmp_path / 'nope'}: no such directory\n"


def test_sigterm_while_waiting_for_the_store(tmp_path: Path) -> None:
    server = launch_server("--redis", f"redis://127.0.0.1:{free_port()}", "--sandbox-workers", "1")
    server.wait_line(r"unreachable \(Connection refused\); retrying in 1s \(attempt 1\)")
    assert server.stop() == 0
    assert "Traceback" not in "".join(server.output)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_store_that_refuses_stops_the_start(redis_factory, workers: int) -> None:
    redis = redis_factory()
    redis.client().set("refusing:{s}:active", "not a hash")  # the live pointer, of the wrong type
    server = launch_server("--redis", redis.url, "--prefix", "refusing", "--sandbox-workers", "1",
                           "--workers", str(workers))
    assert server.proc.wait(timeout=60) == 1
    server.wait_line("WRONGTYPE")
    out = "".join(server.output)
    refused = re.findall(rf"^scriptgate: store {re.escape(redis.url)}: redis refused the operation: .*WRONGTYPE",
                         out, re.M)
    assert len(refused) == 1, out  # said once; not restarted in a loop
    assert "ready on" not in out and "Traceback" not in out and "restarting" not in out


@pytest.mark.parametrize("exc, expected", [
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"), "Connection refused"),
    (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
    (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
    (TimeoutError(), "timed out"),
    (rex.TimeoutError("Timeout reading from socket"), "timed out"),
    (rex.AuthenticationError("invalid username-password pair"), "AuthenticationError: invalid username-password pair"),
])
def test_reasons_read_like_the_operating_system(exc: BaseException, expected: str) -> None:
    wrapped = rex.ConnectionError("Error 111 connecting to 127.0.0.1:1.")
    wrapped.__cause__ = exc
    assert reason(exc) == expected
    if not isinstance(exc, rex.RedisError):
        assert reason(wrapped) == expected  # redis-py wraps the OSError


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_either_event_loop_serves_callbacks(loop: str) -> None:
    """``--event-loop``: the "ready" line names the loop the HTTP process runs, and callbacks
    are answered on it (uvloop is the default; asyncio is the one whose selector can spin)."""
    args = ("--workers", "1") if loop == "uvloop" else ("--workers", "1", "--event-loop", loop)
    server = start_server(*args)
    try:
        server.wait_line(rf"event loop {loop}, \d+ live script", timeout=5)
        r = server.callback("callbackBeforeAddFriendCommand", {"fromUserID": "a", "toUserID": "b"})
        assert r.status == 200 and r.json()["nextCode"] == 0
    finally:
        server.stop()
