"""``scriptgate serve --workers N``: every HTTP process listens on its own SO_REUSEPORT
socket, so the kernel spreads connections over the processes; port 0, restarts, shutdown
and a port already taken by another program.

Which process served a request is read from prometheus-client's multiprocess files (one
``counter_<pid>.db`` per HTTP process in ``PROMETHEUS_MULTIPROC_DIR``), the same values
``/metrics`` sums up: nothing about processes is exposed to clients.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.gojson import go_encode, go_headers
from tests.server_proc import ROOT, TOKEN, ServerProc, free_port

FRIEND = "callbackBeforeAddFriendCommand"
READY = re.compile(r"ready on http://(\S+):(\d+) \(pid (\d+)")


def launch(port: int, *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> ServerProc:
    """Start ``scriptgate serve`` and return at once (no waiting for "ready on")."""
    full_env = {**os.environ, **(env or {}), "SCRIPTGATE_ADMIN_TOKEN": TOKEN}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "server.cli", "serve", "--host", host, "--port", str(port),
           "--sandbox-workers", "1", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=full_env, cwd=ROOT,
                            text=True, start_new_session=True)
    server = ServerProc(port, proc)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.output.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return server


def wait_for(condition: Callable[[], Any], what: str, server: ServerProc, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n" + "".join(server.output[-40:]))
        time.sleep(0.02)


def ready_lines(server: ServerProc) -> list[tuple[str, int, int]]:
    # Searched in the whole output, not line by line: print() to a write-through stderr is
    # two write()s (text, then newline), so two processes' ready lines can interleave as
    # "ready on ...ready on ...\n\n".
    return [(m[1], int(m[2]), int(m[3])) for m in READY.finditer("".join(list(server.output)))]


def wait_ready(server: ServerProc, count: int) -> list[tuple[str, int, int]]:
    """The first ``count`` "ready on" lines (host, port, pid); sets ``server.port``."""
    lines = wait_for(lambda: len(ready_lines(server)) >= count and ready_lines(server), f"{count} ready line(s)",
                     server)
    server.port = lines[0][1]
    return lines


def served_per_pid(metrics_dir: Path) -> dict[int, float]:
    """Callbacks answered by each HTTP process, from its own multiprocess counter file."""
    out: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if orjson.loads(key)[1] == "scriptgate_callbacks_total":
                out[pid] = out.get(pid, 0) + value
    return out


def friend_request(n: int) -> bytes:
    body = go_encode({"callbackCommand": FRIEND, "fromUserID": f"u{n}", "toUserID": "v", "reqMsg": "hi"})
    head = "".join(f"{k}: {v}\r\n" for k, v in go_headers(f"op-{n}").items())
    return (f"POST /{FRIEND} HTTP/1.1\r\nHost: test\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode() + body


def burst(port: int, connections: int, host: str = "127.0.0.1") -> None:
    """Open all connections at once (as wrk does), then send one callback on each."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family) for _ in range(connections)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex((host, port))
        for sock in socks:
            sock.settimeout(10)
            _, writable, _ = select.select([], [sock], [], 10)
            assert writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        for n, sock in enumerate(socks):
            sock.sendall(friend_request(n))
        for sock in socks:
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read()
            assert response.status == 200, body
    finally:
        for sock in socks:
            sock.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def listening_inodes(port: int) -> set[int]:
    """Socket inodes in LISTEN state on ``port`` (any address), from /proc/net/tcp{,6}."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    out.add(int(cols[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    return out


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[ServerProc, Path]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = launch(0, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        yield server, metrics_dir
    finally:
        server.stop()


def test_port_zero_and_a_burst_of_connections_reaches_both_processes(two_processes):
    server, metrics_dir = two_processes
    lines = wait_ready(server, 2)
    ports = {port for _, port, _ in lines}
    pids = {pid for _, _, pid in lines}
    assert len(ports) == 1 and 0 not in ports and len(pids) == 2, lines
    # Each HTTP process listens on a socket of its own; the supervisor listens on none.
    listening = listening_inodes(server.port)
    owned = {pid: socket_inodes(pid) & listening for pid in pids}
    assert len(listening) == 2 and all(len(inodes) == 1 for inodes in owned.values()), (listening, owned)
    assert not socket_inodes(server.proc.pid) & listening
    # 48 connections opened at once: with one shared socket the first process to wake up
    # accepted most of them (45 of 48 was typical); with SO_REUSEPORT the kernel hashes
    # each connection's addresses to pick a process, so each gets about half. Fewer than 8
    # for either has a probability below 1e-6 (binomial, n=48, p=1/2).
    burst(server.port, 48)
    counts = wait_for(lambda: sum((c := served_per_pid(metrics_dir)).values()) == 48 and c, "48 counted", server)
    print("callbacks served per HTTP process:", counts)
    assert set(counts) == pids and min(counts.values()) >= 8, counts


def test_a_crashed_process_is_restarted_and_serves_again(two_processes):
    server, metrics_dir = two_processes
    lines = wait_ready(server, 2)
    victim = lines[0][2]
    os.kill(victim, signal.SIGKILL)
    lines = wait_ready(server, 3)
    new_pid = lines[2][2]
    assert new_pid not in {pid for _, _, pid in lines[:2]} and lines[2][1] == server.port
    assert server.request("GET", "/healthz", token=False).status == 200
    burst(server.port, 48)
    counts = wait_for(lambda: sum((c := served_per_pid(metrics_dir)).values()) == 48 and c, "48 counted", server)
    assert counts.get(new_pid, 0) > 0 and counts.get(lines[1][2], 0) > 0, counts


def test_sigterm_stops_every_process_and_frees_the_port(two_processes):
    server, _ = two_processes
    lines = wait_ready(server, 2)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, "".join(server.output[-40:])
    wait_for(lambda: not any(alive(pid) for _, _, pid in lines), "the HTTP processes to exit", server)
    with socket.socket() as s:  # nothing of ours is left on the port, listening or bound
        s.bind(("127.0.0.1", server.port))
        s.listen()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("other_reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_port_in_use_by_another_program_fails_clearly(workers, other_reuse_port):
    # A listener of the same user with SO_REUSEPORT (e.g. a second scriptgate) must not be
    # joined silently either.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if other_reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = launch(port, "--workers", workers)
        try:
            assert server.proc.wait(timeout=30) != 0
        finally:
            server.stop()
        output = "".join(server.output)
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in output, output
        assert "Traceback" not in output and "ready on" not in output, output


def test_second_server_on_the_same_port_is_refused(two_processes):
    server, _ = two_processes
    wait_ready(server, 2)
    second = launch(server.port, "--workers", "2")
    try:
        assert second.proc.wait(timeout=30) != 0
    finally:
        second.stop()
    assert "address already in use" in "".join(second.output), second.output
    assert server.request("GET", "/healthz", token=False).status == 200


def test_single_process_port_zero_prints_the_real_port():
    server = launch(0, "--workers", "1")
    try:
        (_, port, pid), = wait_ready(server, 1)
        assert port != 0 and pid == server.proc.pid
        assert server.request("GET", "/healthz", token=False).status == 200
    finally:
        server.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_two_processes(tmp_path: Path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = launch(0, "--workers", "2", host="::1", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        lines = wait_ready(server, 2)
        assert {host for host, _, _ in lines} == {"[::1]"}
        burst(server.port, 48, host="::1")
        counts = wait_for(lambda: sum((c := served_per_pid(metrics_dir)).values()) == 48 and c, "48", server)
        assert len(counts) == 2 and all(v > 0 for v in counts.values()), counts
    finally:
        server.stop()


def test_free_port_helper_still_works_with_workers():
    # The common test path: a concrete free port, several processes.
    port = free_port()
    server = launch(port, "--workers", "2")
    try:
        lines = wait_ready(server, 2)
        assert {p for _, p, _ in lines} == {port}
        assert server.request("GET", "/healthz", token=False).status == 200
    finally:
        server.stop()
