"""The embedded store shared by several HTTP processes is private to this instance (a unix
socket in a 0700 directory, no TCP port) and is named as embedded in /healthz."""

from __future__ import annotations

import os
import stat

from tests.server_proc import start_server

FRIEND = "callbackBeforeAddFriendCommand"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _embedded_process(supervisor: int) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if ppid == supervisor and b"start_embedded_server" in cmdline:
            return int(entry)
    raise AssertionError("no embedded store process")


def _listening(table: str, inodes: set[str]) -> list[str]:
    """Rows of /proc/net/{tcp,tcp6,unix} in the listening state owned by ``inodes``."""
    rows = []
    with open(f"/proc/net/{table}") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if table == "unix":
                if len(parts) >= 8 and parts[6] in inodes and parts[5] == "01" and parts[3] == "00010000":
                    rows.append(parts[7])
            elif parts[3] == "0A" and parts[9] in inodes:
                rows.append(line)
    return rows


def test_shared_embedded_store_is_private_and_named_embedded():
    srv = start_server("--workers", "2")
    try:
        pid = int(srv.wait_line(r"ready on .*\(pid (\d+)").group(1))
        health = srv.request("GET", "/healthz").json()
        store = health["store"]
        assert store["mode"] == "embedded" and store["persistent"] is False, store
        assert "redis://" not in str(health) and "unix://" not in str(health)
        assert pid != srv.proc.pid  # an HTTP process under the supervisor
        # The store process listens on a unix socket in a private directory, and on no TCP port.
        inodes = _socket_inodes(_embedded_process(srv.proc.pid))
        paths = _listening("unix", inodes)
        assert len(paths) == 1 and "scriptgate-store-" in paths[0], paths
        for path in paths:
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert not _listening("tcp", inodes) and not _listening("tcp6", inodes)
        # and it is the one store of the instance: a script uploaded through any process is served.
        assert srv.upload(FRIEND, "def handle(req):\n    return deny(5001, 'no')\n").status == 201
    finally:
        srv.stop()
    for path in paths:
        assert not os.path.exists(os.path.dirname(path))  # removed at exit
