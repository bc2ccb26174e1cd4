"""Run ``scriptgate serve`` as a real subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-admin-token-" + "x" * 16


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ServerProc:
    port: int
    proc: subprocess.Popen
    token: str = TOKEN
    output: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)  # a line came, or EOF
    eof: bool = False

    def pump(self) -> None:
        """Collect stderr lines (run in a thread); wakes ``wait_line`` callers."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.output.append(line)
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30, start: int = 0, count: int = 1) -> re.Match[str]:
        """The ``count``-th stderr line from index ``start`` on that matches ``pattern`` (a
        regex), waiting for it; AssertionError with the output if the process ends or time
        runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [m for line in self.output[start:] if (m := regex.search(line))]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "the server exited" if self.eof else f"{timeout}s passed"
                    raise AssertionError(f"no line matching {pattern!r} ({why}):\n" + "".join(self.output[-50:]))
                self.changed.wait(left)

    def index(self, pattern: str) -> int:
        """Index of the first output line matching ``pattern`` (ValueError if none)."""
        regex = re.compile(pattern)
        with self.changed:
            return next(i for i, line in enumerate(self.output) if regex.search(line))

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, token: str | bool | None = True,
                timeout: float = 10) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token is True:
            hdrs["Authorization"] = f"Bearer {self.token}"
        elif isinstance(token, str):
            hdrs["Authorization"] = f"Bearer {token}"
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def admin(self, method: str, path: str, data: Any = None, **kw: Any) -> Response:
        body = None if data is None else (data if isinstance(data, (bytes, str)) else orjson.dumps(data))
        return self.request(method, path, body, **kw)

    def upload(self, command: str, source: str, activate: bool = True) -> Response:
        q = "" if activate else "?activate=false"
        return self.request("PUT", f"/admin/scripts/{command}{q}", source)

    def callback(self, command: str, payload: Any, base: str = "", raw: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        from tests.gojson import go_encode, go_headers

        body = raw if raw is not None else go_encode(payload)
        return self.request("POST", f"{base}/{command}", body, headers=headers or go_headers(), token=False)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch_server(*args: str, env: dict[str, str] | None = None, token: str | None = TOKEN,
                  port: int | None = None) -> ServerProc:
    """Start ``scriptgate serve`` on 127.0.0.1 and return at once; its stderr is collected
    into ``output`` (see ``wait_line``)."""
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SCRIPTGATE_ADMIN_TOKEN", None)
    if token:
        full_env["SCRIPTGATE_ADMIN_TOKEN"] = token
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    if "--workers" not in args:
        cmd += ["--workers", "1"]
    if "--sandbox-workers" not in args:
        cmd += ["--sandbox-workers", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=full_env, cwd=ROOT, text=True)
    server = ServerProc(port, proc, token or "")
    threading.Thread(target=server.pump, daemon=True).start()
    return server


def start_server(*args: str, env: dict[str, str] | None = None, ready_timeout: float = 30,
                 token: str | None = TOKEN) -> ServerProc:
    server = launch_server(*args, env=env, token=token)
    try:
        server.wait_line("ready on", ready_timeout)
    except AssertionError as exc:
        server.stop()
        raise RuntimeError(f"server did not start: {exc}") from None
    return server
