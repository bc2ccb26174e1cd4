"""At the file-descriptor limit: no traceback flood, accept backs off, service resumes
(server/http/conn.py). The server runs with a lowered RLIMIT_NOFILE (prlimit on the
running process, a few descriptors above what it already uses)."""

from __future__ import annotations

import http.client
import os
import re
import resource
import socket
import sys
import threading

import pytest

from tests.server_proc import start_server
from tests.timing import FAR_S

INVITE = "callbackBeforeInviteJoinGroupCommand"
SPARE_FDS = 12
CLIENTS = 60

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit and /proc are Linux's")


def test_fd_exhaustion_backs_off_logs_little_and_recovers():
    srv = start_server("--workers", "1")
    held: list[socket.socket] = []
    try:
        pid = int(srv.wait_line(r"ready on .*\(pid (\d+)").group(1))
        used = len(os.listdir(f"/proc/{pid}/fd"))
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + SPARE_FDS, hard))
        start = len(srv.output)
        # Idle connections: the server accepts SPARE_FDS or so, the rest wait in the backlog.
        for _ in range(CLIENTS):
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=FAR_S))
        srv.wait_line("out of file descriptors", timeout=FAR_S, start=start)

        # A callback sent now waits in the backlog until descriptors are free again.
        answer: dict[str, object] = {}
        sent = threading.Event()

        def call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=FAR_S)
            try:
                conn.request("POST", f"/{INVITE}", b'{"groupID": "g"}', {"Content-Type": "application/json"})
                sent.set()
                r = conn.getresponse()
                answer["status"], answer["body"] = r.status, r.read()
            except Exception as exc:  # reported by the assertion below
                answer["error"] = exc
            finally:
                sent.set()
                conn.close()

        caller = threading.Thread(target=call)
        caller.start()
        assert sent.wait(FAR_S)
        for sock in held:
            sock.close()
        held.clear()
        caller.join(FAR_S)
        assert answer.get("status") == 200, answer
        srv.wait_line("accepting connections again", timeout=FAR_S, start=start)
        # and afterwards, as usual
        assert srv.callback(INVITE, {"groupID": "g"}).status == 200

        log = "".join(srv.output[start:])
        assert "Traceback" not in log, log[:3000]
        fd_lines = [line for line in srv.output[start:] if "out of file descriptors" in line]
        # One line per 10 s at most (the whole episode lasts seconds, not minutes).
        assert 1 <= len(fd_lines) <= 3, fd_lines
        assert re.search(r"\d+ failed accepts", fd_lines[0])
        assert len(log) < 20_000, log[:3000]
    finally:
        for sock in held:
            sock.close()
        srv.stop()
