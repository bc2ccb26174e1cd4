"""``scriptgate serve``: run the HTTP server (one process, or N processes sharing the port)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from server.config import Config

log = logging.getLogger("scriptgate.serve")
# Tornado must never drop an oversized request before our handler can answer 413 with a
# JSON body; the real per-endpoint limits are enforced while streaming the body.
TORNADO_MAX_BODY = 1 << 30


def redact_url(url: str) -> str:
    """The store URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def resolve_token(cfg: Config) -> tuple[str, bool]:
    token = os.environ.get("SCRIPTGATE_ADMIN_TOKEN") or cfg.admin_token
    if token:
        return token, False
    return secrets.token_urlsafe(32), True


async def load_scripts_dir(state: Any, directory: str) -> int:
    """Upload ``DIR/<command>.py`` files whose content differs from the live version.

    Returns the number of scripts uploaded. Raises SystemExit with a one-line message for
    an invalid script, so a bad deploy fails loudly at start.
    """
    uploaded = 0
    for path in sorted(Path(directory).glob("*.py")):
        command = path.stem
        if command not in state.catalog:
            log.warning("--scripts: %s is not named after a callbackCommand; skipped", path.name)
            continue
        source = path.read_text("utf-8")
        issues = await state.pool.check(source)
        if issues:
            first = issues[0]
            raise SystemExit(f"scriptgate: {path}:{first.line}:{first.col}: {first.message}")
        sha = hashlib.sha256(source.encode()).hexdigest()
        active = state.table.get(command)
        if active is not None and active.sha256 == sha:
            continue
        await state.store.put_version(command, source, sha, True, "scripts-dir")
        uploaded += 1
    if uploaded:
        await state.refresh_scripts()
    return uploaded


async def _load_scripts_with_retry(state: Any, directory: str) -> None:
    from server.store.base import StoreUnavailable

    delay = 0.5
    while True:
        try:
            count = await load_scripts_dir(state, directory)
            log.info("--scripts %s: %d script(s) uploaded", directory, count)
            return
        except StoreUnavailable:
            log.warning("--scripts: store unavailable, retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def serve_process(cfg: Config, token: str, sockets: list[Any] | None, load_scripts: bool) -> None:
    import tornado.httpserver

    from server.app import build_state, make_app, start_background, stop

    state = await build_state(cfg, token)
    app = make_app(state)
    server = tornado.httpserver.HTTPServer(
        app,
        xheaders=cfg.trust_proxy,
        max_body_size=TORNADO_MAX_BODY,
        idle_connection_timeout=75,
        body_timeout=30,
    )
    if sockets is None:
        server.listen(cfg.port, cfg.host)
    else:
        server.add_sockets(sockets)
    await start_background(state)
    where = redact_url(cfg.redis) if cfg.redis else "embedded (in-process, not persistent)"
    print(
        f"scriptgate: ready on http://{cfg.host}:{cfg.port} (pid {os.getpid()}, store: {where}, "
        f"{cfg.sandbox_workers} sandbox workers)",
        file=sys.stderr,
        flush=True,
    )
    if load_scripts and cfg.scripts_dir:
        if state.store.healthy:
            await load_scripts_dir(state, cfg.scripts_dir)
        else:
            state.tasks.append(asyncio.create_task(_load_scripts_with_retry(state, cfg.scripts_dir)))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    server.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), timeout=2)
    await stop(state)


_EMBEDDED_MAIN = """
import sys
from server.store.connect import start_embedded_server
url, _stop = start_embedded_server()
print(url, flush=True)
sys.stdin.read()  # serve until the parent goes away (its end of the pipe closes)
"""


def start_embedded_process() -> tuple[str, Any]:
    """Run the embedded store (fakeredis over TCP on loopback) in its own process, so the
    HTTP processes can share it. A thread in this process would be inherited half-way by
    fork; a child process also dies with us because it waits on our pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMBEDDED_MAIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("redis://"):
        proc.kill()
        raise SystemExit("scriptgate: the embedded store did not start")

    def stop() -> None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    return url, stop


def supervise(workers: int, child_main: Any) -> int:
    """Fork ``workers`` HTTP processes, restart any that dies, forward SIGTERM/SIGINT.

    Tornado's fork_processes does not pass signals on, which would leave orphans behind a
    process manager's stop; this loop does, and gives up on a crash loop.
    """
    children: dict[int, int] = {}
    restarts: list[float] = []
    stopping = False

    def spawn(task_id: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                child_main(task_id)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if not isinstance(exc.code, int) and exc.code:
                    print(exc.code, file=sys.stderr, flush=True)
            except BaseException:
                log.exception("HTTP process %d failed", task_id)
                code = 1
            os._exit(code)
        children[pid] = task_id

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for task_id in range(workers):
        spawn(task_id)
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        task_id = children.pop(pid, None)
        if task_id is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 30] + [now]
        if len(restarts) > 5 * workers:
            log.error("HTTP processes keep dying (last exit %s); stopping", code)
            on_signal(signal.SIGTERM, None)
            exit_code = 1
            continue
        log.warning("HTTP process %d exited with %s; restarting it", task_id, code)
        spawn(task_id)
    return exit_code


def run(cfg: Config) -> int:
    import tornado.netutil

    token, generated = resolve_token(cfg)
    if generated:
        print(
            f"scriptgate: admin token (generated; set SCRIPTGATE_ADMIN_TOKEN to choose one): {token}",
            file=sys.stderr,
            flush=True,
        )
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1:
        asyncio.run(serve_process(cfg, token, None, True))
        return 0
    # Several processes share the listening socket and one store.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="scriptgate-metrics-"))
    stop_embedded = None
    if cfg.redis is None:
        cfg.redis, stop_embedded = start_embedded_process()
    sockets = tornado.netutil.bind_sockets(cfg.port, cfg.host)
    try:
        return supervise(workers, lambda task_id: asyncio.run(serve_process(cfg, token, sockets, task_id == 0)))
    finally:
        if stop_embedded is not None:
            stop_embedded()
