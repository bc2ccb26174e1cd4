"""``scriptgate serve``: run the HTTP server (one process, or N processes sharing the port)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from server.config import Config

log = logging.getLogger("scriptgate.serve")
# Tornado must never drop an oversized request before our handler can answer 413 with a
# JSON body; the real per-endpoint limits are enforced while streaming the body.
TORNADO_MAX_BODY = 1 << 30


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


def run(cfg: Config) -> int:
    import tornado.netutil
    import tornado.process

    token, generated = resolve_token(cfg)
    if generated:
        print(
            f"scriptgate: admin token (generated; set SCRIPTGATE_ADMIN_TOKEN to choose one): {token}",
            file=sys.stderr,
            flush=True,
        )
    workers = cfg.workers or os.cpu_count() or 1
    store_desc = cfg.redis or "embedded (in-process, not persistent)"
    if workers == 1:
        print(f"scriptgate: listening on http://{cfg.host}:{cfg.port} (store: {store_desc})", file=sys.stderr, flush=True)
        asyncio.run(serve_process(cfg, token, None, True))
        return 0
    # Several processes share the listening socket and one store.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="scriptgate-metrics-"))
    embedded = None
    if cfg.redis is None:
        from server.store.connect import start_embedded_server

        url, embedded = start_embedded_server()
        cfg.redis = url
        store_desc = f"embedded (shared by {workers} processes, not persistent)"
    sockets = tornado.netutil.bind_sockets(cfg.port, cfg.host)
    print(
        f"scriptgate: listening on http://{cfg.host}:{cfg.port} with {workers} processes (store: {store_desc})",
        file=sys.stderr,
        flush=True,
    )
    try:
        task_id = tornado.process.fork_processes(workers, max_restarts=100)
    except KeyboardInterrupt:
        return 0
    finally:
        # Only the parent gets here when its children have all exited.
        if embedded is not None and tornado.process.task_id() is None:
            embedded()
    asyncio.run(serve_process(cfg, token, sockets, task_id == 0))
    return 0
