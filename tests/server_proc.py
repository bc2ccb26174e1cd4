"""Run ``scriptgate serve`` as a real subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import http.client
import os
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


def start_server(*args: str, env: dict[str, str] | None = None, ready_timeout: float = 30,
                 token: str | None = TOKEN) -> ServerProc:
    port = free_port()
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
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.output.append(line)
            if "ready on" in line:
                ready.set()
        ready.set()  # process exited

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    ready.wait(ready_timeout)
    if proc.poll() is not None or time.monotonic() > deadline or not any("ready on" in x for x in server.output):
        server.stop()
        raise RuntimeError("server did not start:\n" + "".join(server.output[-50:]))
    return server
