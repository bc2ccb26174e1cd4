"""The Dockerfile and compose.yaml, tested as far as a machine without a container
runtime allows: the Dockerfile is linted structurally (slim base, lock install with hashes,
non-root user, EXPOSE, HEALTHCHECK on /healthz, exec-form ENTRYPOINT/CMD), compose.yaml is
checked for Redis with AOF on and the health-gated start; then the image's own command
(ENTRYPOINT + CMD) is run here and its HEALTHCHECK command must pass against it.
(With a working Docker daemon, ``docker build .`` and ``docker compose up`` do the rest:
docs/deploy.md.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from tests.ports import free_port
from tests.server_proc import ROOT, TOKEN, ServerProc

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def exec_form(steps: list[tuple[str, str]], word: str) -> list[str]:
    args = [rest for w, rest in steps if w == word][-1]
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{word} must be exec form"
    return value


def test_dockerfile_structure() -> None:
    steps = instructions(DOCKERFILE)
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert re.search(r"pip install --require-hashes --no-deps -r requirements\.lock", runs), runs
    assert ("COPY", "requirements.lock .") in steps
    final = final_stage(steps)
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    # The USER comes after every RUN of the final stage, so nothing later runs as root.
    last_user = max(i for i, (word, _) in enumerate(final) if word == "USER")
    assert all(word != "RUN" for word, _ in final[last_user:])
    assert ("EXPOSE", "10006") in final
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "--interval=" in health[0]
    assert exec_form(final, "ENTRYPOINT") == ["scriptgate"]
    assert exec_form(final, "CMD")[0] == "serve"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored


def test_compose_runs_redis_with_aof_and_waits_for_it() -> None:
    text = COMPOSE.read_text()
    services = re.split(r"\n  (?=[a-z][a-z0-9_-]*:\n)", text.split("\nservices:\n", 1)[1].split("\nvolumes:", 1)[0])
    by_name = {block.split(":", 1)[0].strip(): block for block in services}
    assert set(by_name) == {"redis", "scriptgate"}, list(by_name)
    redis = by_name["redis"]
    assert re.search(r'"--appendonly",\s*"yes"', redis) and "healthcheck:" in redis and "/data" in redis
    app = by_name["scriptgate"]
    assert "build: ." in app and "redis://redis:6379" in app
    assert re.search(r"depends_on:\s*\n\s+redis:\s*\n\s+condition: service_healthy", app)
    assert "SCRIPTGATE_ADMIN_TOKEN: ${SCRIPTGATE_ADMIN_TOKEN:?" in app  # no default token baked in
    assert "redis-data:" in text.split("\nvolumes:", 1)[1]


def test_the_image_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    steps = final_stage(instructions(DOCKERFILE))
    command = exec_form(steps, "ENTRYPOINT") + exec_form(steps, "CMD")
    assert command[0] == "scriptgate"
    port = free_port()
    # ``scriptgate`` is this checkout's CLI; the port is a free one (the image uses 10006).
    argv = [sys.executable, "-m", "server.cli", *command[1:], "--port", str(port), "--workers", "1",
            "--sandbox-workers", "1"]
    env = {**os.environ, "SCRIPTGATE_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path, text=True)
    server = ServerProc(port, proc)
    threading.Thread(target=server.pump, daemon=True).start()
    try:
        server.wait_line("ready on", 60)
        health = next(rest for word, rest in steps if word == "HEALTHCHECK")
        check = json.loads(health[health.index("CMD") + 3:].strip())
        check = [sys.executable if part == "python" else part.replace(":10006/", f":{port}/") for part in check]
        result = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert server.request("GET", "/admin/logs").status == 200
    finally:
        server.stop()
