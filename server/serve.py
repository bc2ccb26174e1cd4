"""``scriptgate serve``: run the HTTP server (one process, or N processes sharing the port).

Start-up, in order (every line on stderr):

1. ``--scripts DIR`` is read and checked like an upload; an invalid script is an error
   line ``scriptgate: DIR/<command>.py:LINE:COL: message`` per problem, then
   ``scriptgate: --scripts DIR: nothing loaded (N invalid scripts)``, exit 1, nothing
   started or uploaded. A file not named after a callbackCommand is skipped with a line
   saying so; a missing DIR is an error line;
2. the port is bound (a port in use is an error line, exit 1); connections are taken once
   the live scripts are loaded (step 5) or the store was found unreachable (two attempts,
   1 s apart), and callbacks are answered from then on: by the command's failure policy while the
   live scripts are not known (``/healthz`` says "degraded"), as during any later store
   outage. (So a restarted process never answers "no script" for a command that has one.)
3. the store is reached. While it does not answer, one error line per attempt:
   ``scriptgate: store redis://:***@h:6379 unreachable (Connection refused); retrying in
   1s (attempt 1)`` (then after 2 s, 4 s, and every 5 s), and once it answers
   ``scriptgate: store redis://:***@h:6379 is reachable (after N failed attempts)``;
4. the ``--scripts`` files whose content differs from the live version are uploaded, and
   one line sums it up for the whole server: ``scriptgate: loaded 7 scripts from scripts/
   (7 new versions, 0 unchanged)``;
5. each HTTP process loads the live scripts, then prints ``scriptgate: ready on
   http://HOST:PORT (pid P, store: S, N sandbox workers, event loop L, M live scripts)``: "ready" means
   the scripts are being run.

With ``--workers N`` > 1, step 1 runs once in the supervisor; the first HTTP process does
steps 3-4 and prints their lines, the others wait for it (a shared Event), then load the
live scripts and print their own "ready".

An unreachable store is retried for ever, not given up on after a bounded time: the usual
cause is start-up order (Redis, a Sentinel or a cluster coming up after us, a container
restart), which fixes itself, and meanwhile callbacks get the failure policy's answer
(what the operator chose for "the scripts cannot run") rather than the network error a
stopped server would give OpenIM, which fails the user's operation. A process manager
restarting a server that gave up would only repeat the same lines. Every attempt is an
error line naming the store (password masked) and the reason, so a wrong URL or password
does not go unnoticed. A store that answers but refuses the operations (an error reply,
not an outage) stops the start with an error line instead. SIGTERM/SIGINT stop the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from server.config import Config

log = logging.getLogger("scriptgate.serve")
T = TypeVar("T")
# The HTTP layer must never drop an oversized request before our handlers can answer it with
# a JSON body; the real per-endpoint limits are enforced while streaming the body.
HTTP_MAX_BODY = 1 << 30
# An HTTP process that cannot bind its listening socket, or whose store refuses to work,
# exits with this code after saying why; the supervisor then stops instead of restarting
# it in a loop (EX_CONFIG from sysexits.h).
EXIT_NO_RESTART = 78


def say(line: object) -> None:
    """One line on stderr in one write: the HTTP processes share the stream, and print()
    writes the text and its newline separately, so two processes' lines could merge."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


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


@dataclass
class ScriptsLoad:
    """What ``--scripts DIR`` did, across start-up attempts (a store outage in the middle
    of a deploy must not count the scripts uploaded before it as "unchanged")."""

    directory: str
    files: int = 0
    uploaded: set[str] = field(default_factory=set)

    def summary(self) -> str:
        count = f"{self.files} script" + ("" if self.files == 1 else "s")
        new = len(self.uploaded)
        versions = f"{new} new version" + ("" if new == 1 else "s")
        return f"scriptgate: loaded {count} from {self.directory} ({versions}, {self.files - new} unchanged)"


def read_scripts_dir(directory: str, commands: Any, openim: str = "main") -> dict[str, str]:
    """``DIR/<command>.py`` files, checked as an upload would be: {command: source}.

    Raises SystemExit with one line per problem (every bad script, not just the first),
    so a bad deploy fails loudly at start and uploads nothing. The files are the
    operator's own, so they are checked here rather than in a sandbox worker."""
    from server.offline.env import OfflineError
    from server.offline.files import read_source
    from server.service.scripts import local_problems

    root = Path(directory)
    if not root.is_dir():
        raise SystemExit(f"scriptgate: --scripts {directory}: no such directory")
    sources: dict[str, str] = {}
    problems: list[str] = []
    bad: set[Path] = set()
    for path in sorted(root.glob("*.py")):
        if path.stem not in commands:
            say(f"scriptgate: --scripts: skipped {path}: not named after a callbackCommand")
            continue
        try:
            source = read_source(path)
        except (OfflineError, OSError) as exc:
            problems.append(f"scriptgate: {exc}")
            bad.add(path)
            continue
        # The same two checks an upload through the admin API makes (server/service/scripts.py).
        issues = local_problems(commands.get(path.stem), source, openim)
        if issues:
            problems += [f"scriptgate: {path}:{i.line}:{i.col}: {i.message}" for i in issues]
            bad.add(path)
        sources[path.stem] = source
    if problems:
        problems.append(f"scriptgate: --scripts {directory}: nothing loaded ({len(bad)} invalid script"
                        + ("" if len(bad) == 1 else "s") + ")")
        raise SystemExit("\n".join(problems))
    return sources


async def upload_scripts(store: Any, sources: dict[str, str], load: ScriptsLoad) -> None:
    """Upload each script whose content differs from the live version (StoreUnavailable
    propagates: the caller retries)."""
    from server.service.scripts import deploy

    load.files = len(sources)
    await deploy(store, sources, "scripts-dir", load.uploaded)


class StartupError(Exception):
    """A start-up failure that retrying cannot fix: its message is the line to print."""


STORE_RETRY_DELAYS_S = (1.0, 2.0, 4.0)
STORE_RETRY_MAX_S = 5.0
# Failed attempts after which the store counts as unreachable at start (connections are then
# taken and answered by the failure policy): two, one second apart, so one slow answer on a
# busy machine does not open the port before the live scripts are loaded.
UNREACHABLE_AFTER = 2


async def until_store_answers(store: Any, step: Callable[[], Awaitable[T]],
                              failed: asyncio.Event | None = None) -> T:
    """Run ``step`` (it needs the store) once the store answers; until then print why it
    does not and retry, for ever (see the module docstring): after 1, 2, 4, then every 5 s."""
    from server.store.base import StoreError, StoreUnavailable

    attempt = 0
    while True:
        attempt += 1
        try:
            if await store.ping():
                result = await step()
                if attempt > 1:
                    say(f"scriptgate: store {store.display} is reachable (after {attempt - 1} failed "
                        f"attempt{'' if attempt == 2 else 's'})")
                return result
        except StoreUnavailable:
            pass
        except StoreError as exc:  # the store answers but refuses: retrying would not help
            raise StartupError(f"scriptgate: store {store.display}: {exc.message}") from None
        delay = STORE_RETRY_DELAYS_S[attempt - 1] if attempt <= len(STORE_RETRY_DELAYS_S) else STORE_RETRY_MAX_S
        if failed is not None and attempt >= UNREACHABLE_AFTER:
            failed.set()
        why = store.health.last_reason or "no answer"
        say(f"scriptgate: store {store.display} unreachable ({why}); retrying in {delay:g}s (attempt {attempt})")
        await asyncio.sleep(delay)


@dataclass
class Startup:
    """What one HTTP process does before "ready" (see the module docstring).

    ``sources``: the ``--scripts`` files to upload (None: no --scripts). ``loaded``: with
    several processes, a ``multiprocessing.Event`` set by the first process once the store
    answered and the scripts are live; the others wait for it before loading the live
    scripts, so the retry lines and the summary line come once, from the first process.
    """

    directory: str | None = None
    sources: dict[str, str] | None = None
    loaded: Any = None
    first: bool = True
    siblings: Any = None  # server/sync.py Siblings bound to this process

    async def run(self, state: Any, failed: asyncio.Event | None = None) -> None:
        """``failed`` is set once the store was found unreachable (UNREACHABLE_AFTER attempts)."""
        if not self.first:
            while not await asyncio.to_thread(self.loaded.wait, 0.5):
                pass  # a bounded wait, so a stop is not held up by the thread
        upload = self.sources is not None and self.first and not (self.loaded is not None and self.loaded.is_set())
        load = ScriptsLoad(self.directory or "")

        async def step() -> None:
            if upload:
                assert self.sources is not None
                await upload_scripts(state.store, self.sources, load)
            await state.table.refresh()

        await until_store_answers(state.store, step, failed)
        if upload:
            say(load.summary())
        if self.loaded is not None and self.first:
            self.loaded.set()


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"scriptgate: cannot listen on {where}: address already in use (another program is listening there)"
    return f"scriptgate: cannot listen on {where}: {exc.strerror or exc}"


def listen_sockets(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """Tornado's listening sockets for host:port, or SystemExit with a one-line message."""
    import tornado.netutil

    try:
        return tornado.netutil.bind_sockets(port, host, reuse_port=reuse_port)
    except OSError as exc:
        raise SystemExit(_cannot_listen(host, port, exc)) from None


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind (never listen on) host:port for the HTTP processes' SO_REUSEPORT sockets.

    Each HTTP process binds and listens on its own socket with SO_REUSEPORT, so the kernel
    spreads new connections over the processes (one shared socket lets whichever process
    wakes first accept a burst of connections, and keep them: keep-alive). The supervisor
    holds no listening socket, only these bound ones, for three reasons:

    * the port is checked before any process starts: each socket is bound *without*
      SO_REUSEPORT first, which fails (EADDRINUSE) if anything at all listens there, even a
      process of ours with SO_REUSEPORT (e.g. a second ``scriptgate serve`` on the same
      port). SO_REUSEPORT alone would let us silently share the port with such a process;
    * ``--port 0`` becomes one concrete free port, which every process then binds;
    * the port stays ours while HTTP processes restart, even if all of them are down.

    SO_REUSEPORT is turned on after the bind, so the HTTP processes (same user) can join
    the port. A bound socket that never listens gets no connections, and when no process
    listens a client is refused as usual. Sockets are resolved like Tornado's
    ``bind_sockets`` (same getaddrinfo flags, families and IPv6-only setting) so the
    processes bind exactly these addresses.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("scriptgate: --workers N > 1 needs SO_REUSEPORT, which this platform lacks")
    address = host or None
    family = socket.AF_UNSPEC if socket.has_ipv6 else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except OSError as exc:
        raise SystemExit(f"scriptgate: cannot listen on {host}:{port}: {exc}") from None
    seen: set[Any] = set()
    try:
        for info in sorted(infos, key=lambda x: x[0]):
            if info in seen:
                continue
            seen.add(info)
            af, socktype, proto, _, sockaddr = info
            try:
                sock = socket.socket(af, socktype, proto)
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    continue
                raise
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets and sockaddr[1] == 0:  # port 0: the same port on every address
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL and address == "localhost" and sockaddr[0] == "::1":
                    continue  # IPv6 half-disabled (docker): Tornado skips it too
                raise SystemExit(_cannot_listen(host, sockaddr[1], exc)) from None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sockets.append(sock)
            _check_joinable(sock, host)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise SystemExit(f"scriptgate: cannot listen on {host}:{port}: no usable address")
    return sockets


def _check_joinable(reserved: socket.socket, host: str) -> None:
    """Fail now, not in every HTTP process, if a SO_REUSEPORT socket cannot bind next to
    ``reserved`` (a kernel that only honours SO_REUSEPORT when set before bind)."""
    probe = socket.socket(reserved.family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if reserved.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(reserved.getsockname())
    except OSError as exc:
        port = reserved.getsockname()[1]
        raise SystemExit(_cannot_listen(host, port, exc) + " (SO_REUSEPORT after bind not supported?)") from None
    finally:
        probe.close()


def run_process(cfg: Config, token: str, reuse_port: bool, startup: Startup) -> None:
    """Run one HTTP process on uvloop, or on asyncio's loop whose selector polls briefly
    while a sandbox call is out (``event_loop``, ``sandbox_spin_us``; sandbox/host/spin.py)."""
    from sandbox.host.spin import loop_factory

    if cfg.event_loop == "uvloop":
        import uvloop

        factory, selector = uvloop.new_event_loop, None
    else:
        factory, selector = loop_factory(cfg.sandbox_spin_us)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_process(cfg, token, reuse_port, startup, selector))


def http_server(state: Any) -> Any:
    """The process's HTTP server: callbacks answered by CallbackServer's own delegate
    (server/http/callback.py), the admin API, /healthz and /metrics by the application."""
    from server.app import app_paths, make_app
    from server.http.callback import CallbackServer
    from server.http.conn import Server

    cfg = state.config
    delegate = CallbackServer(make_app(state), state, app_paths(state))
    return Server(  # HTTP/1.1 on httptools, answering what its parser refuses (server/http/h1.py)
        delegate,
        xheaders=cfg.trust_proxy,
        max_body_size=HTTP_MAX_BODY,
        idle_connection_timeout=75,
        body_timeout=cfg.body_timeout_s,
        reject=delegate.rejection,
    )


async def serve_process(cfg: Config, token: str, reuse_port: bool, startup: Startup, selector: Any = None) -> None:
    """One HTTP process. With ``reuse_port`` (several processes) it binds its own
    SO_REUSEPORT socket to ``cfg.port``, which the supervisor has made concrete, once it can
    answer, so the kernel only sends it connections it can answer at once."""
    from server.service.state import build_state, start_background, stop

    # One process binds before starting anything, to fail fast if the port is taken.
    sockets = None if reuse_port else listen_sockets(cfg.host, cfg.port)
    state = await build_state(cfg, token, siblings=startup.siblings)
    if selector is not None and hasattr(state.pool, "busy"):
        selector.busy = state.pool.busy
    server = http_server(state)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    # Connections are taken once the live scripts are loaded, or once the store was found
    # unreachable (UNREACHABLE_AFTER): a process restarted in a rolling restart answers with its scripts from
    # its first callback (its listening socket queues connections meanwhile; a SO_REUSEPORT
    # process does not listen yet, so the kernel sends them to its siblings).
    failed = asyncio.Event()
    starting = asyncio.create_task(startup.run(state, failed), name="startup")
    waiting = asyncio.create_task(stopped.wait())
    unreachable = asyncio.create_task(failed.wait())
    await asyncio.wait({starting, waiting, unreachable}, return_when=asyncio.FIRST_COMPLETED)
    unreachable.cancel()
    if sockets is None:
        try:
            sockets = listen_sockets(cfg.host, cfg.port, reuse_port=True)
        except SystemExit as exc:
            say(exc.code)
            starting.cancel()
            await asyncio.wait({starting})
            await stop(state)
            raise SystemExit(EXIT_NO_RESTART) from None
    # Callbacks are answered from now on: by the failure policy until the live scripts are
    # known (server/service/callbacks.py), so OpenIM gets the answer the operator chose, not a network error.
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    error = None
    if not starting.done():
        starting.cancel()
        await asyncio.wait({starting})
    elif starting.exception() is not None:
        error = starting.exception()
    if stopped.is_set() or error is not None:
        server.stop()
        await stop(state)
        if isinstance(error, StartupError):
            if reuse_port:  # one of several processes: the supervisor must not restart it
                say(error)
                raise SystemExit(EXIT_NO_RESTART)
            raise SystemExit(str(error))
        if error is not None:
            raise error
        return
    await start_background(state)
    # Everything built so far lives as long as the process: keep the cyclic GC from
    # walking it again and again (a full collection over it stalls every callback for
    # milliseconds; measured as p99 spikes at a steady request rate).
    gc.collect()
    gc.freeze()
    if cfg.redis is None:
        where = "embedded (in-process, not persistent)"
    elif cfg.store_label:
        where = cfg.store_label
    else:
        where = redact_url(cfg.redis)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    live = len(state.table.snapshot())
    say(
        f"scriptgate: ready on http://{host}:{port} (pid {os.getpid()}, store: {where}, "
        f"{cfg.sandbox_workers} sandbox worker{'' if cfg.sandbox_workers == 1 else 's'}, "
        f"event loop {cfg.event_loop}, {live} live script{'' if live == 1 else 's'})"
    )
    await stopped.wait()
    await drain(state, server, cfg.drain_grace_s)
    await stop(state)


DRAIN_POLL_S = 0.01
# After the last in-flight callback: how long no new one may start before the connections
# are closed (a request on a connection accepted just before the stop can still be on its
# way in).
DRAIN_QUIET_S = 0.1
# How long a connection accepted before the stop may take to send its first request (Go's
# http.Server.Shutdown waits 5 s for such "new" connections too): a client that connected
# just before the listening socket closed has its request on the way, and on a loaded host
# it can take far longer than DRAIN_QUIET_S to arrive. Closing before it does resets it.
FIRST_REQUEST_WAIT_S = 5.0
# How long a handshake the listener has answered may take to finish (a round trip; the
# listener no longer answers new ones): see Server.refuse_new_handshakes.
HANDSHAKE_GRACE_S = 0.1
# How long the queued recordings get to reach the store at a graceful stop.
RECORDER_SETTLE_S = 5.0


async def drain(state: Any, server: Any, grace_s: float) -> None:
    """Graceful stop (SIGTERM/SIGINT): stop accepting (new SYNs dropped, the handshakes under
    way finished and accepted, then the listening socket closed, so a load balancer's new
    connections go elsewhere), let every in-flight callback finish
    within ``grace_s`` (each is bounded by its own deadline anyway) and every connection
    accepted before the stop send its first request (``FIRST_REQUEST_WAIT_S``), and with them the
    scripts of early-acknowledged after-callbacks (server/service/after.py; from now on
    after-callbacks are answered after their script), then close the connections and cut
    (count and log) the background runs still pending; ``stop`` then flushes the recordings
    and stops the pool."""
    state.draining = True
    if state.siblings is not None:
        state.siblings.reset(state.siblings.index)  # admin writes stop waiting for us
    # New handshakes are refused, the ones under way get HANDSHAKE_GRACE_S to finish and be
    # accepted, then the listeners close (after taking what is queued): server/http/conn.py.
    server.refuse_new_handshakes()
    await asyncio.sleep(HANDSHAKE_GRACE_S)
    server.stop_accepting()
    dispatcher = state.dispatcher
    after = dispatcher.after
    after.stop_accepting()
    started = time.monotonic()
    deadline = started + grace_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if dispatcher.inflight or after.pending or server.unfinished(FIRST_REQUEST_WAIT_S):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= DRAIN_QUIET_S:
            break
        await asyncio.sleep(DRAIN_POLL_S)
    left = dispatcher.inflight
    if left:
        log.error("graceful stop: %d callback(s) still running after %gs; closing their connections", left, grace_s)
    cut = after.cut()
    if cut:
        # Already acknowledged to OpenIM, which will not send them again: say how many.
        log.error("graceful stop: %d early-acknowledged after-callback script(s) not finished after %gs: cut",
                  cut, grace_s)
        state.metrics.sync_after(after)
    say(f"scriptgate: stopping (pid {os.getpid()}): drained in {time.monotonic() - started:.2f}s"
        + (f", {left} callback(s) cut" if left else "")
        + (f", {cut} after-callback script(s) cut" if cut else ""))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), timeout=2)
    if after.tasks:
        await asyncio.wait(set(after.tasks), timeout=1)  # let the cancellations unwind
    if state.recorder is not None:  # written by the recorder's own loop, before stop() ends it
        await state.recorder.settle(RECORDER_SETTLE_S)


_EMBEDDED_MAIN = """
import signal, sys
from server.store.connect import start_embedded_server
url, stop = start_embedded_server()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    print(url, flush=True)
    sys.stdin.read()  # serve until the parent goes away (its end of the pipe closes)
except KeyboardInterrupt:
    pass
finally:
    stop()  # and remove the private socket directory
"""


def start_embedded_process() -> tuple[str, Any]:
    """Run the embedded store (fakeredis on a private unix socket) in its own process, so the
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
    if not url.startswith("unix://"):
        proc.kill()
        raise SystemExit("scriptgate: the embedded store did not start")

    def stop() -> None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    return url, stop


def supervise(workers: int, child_main: Any, gone: Callable[[int], None] | None = None) -> int:
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
                    say(exc.code)
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
        if task_id is not None and gone is not None:
            gone(task_id)  # its slots must not hold up admin writes or recording reads
        if task_id is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == EXIT_NO_RESTART:  # it said why; restarting would not help
            on_signal(signal.SIGTERM, None)
            exit_code = 1
            continue
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
    from server import logfmt
    from server.catalog import catalog

    logfmt.apply(logfmt.chosen(cfg.log_format))
    token, generated = resolve_token(cfg)
    if generated:
        say(f"scriptgate: admin token (generated; set SCRIPTGATE_ADMIN_TOKEN to choose one): {token}")
    workers = cfg.workers or os.cpu_count() or 1
    # Checked before anything starts: a bad script stops the start with its lines.
    sources = read_scripts_dir(cfg.scripts_dir, catalog(), cfg.openim) if cfg.scripts_dir else None
    from server.sync import Siblings

    if workers == 1:
        run_process(cfg, token, False, Startup(cfg.scripts_dir, sources, siblings=Siblings.create(1).bind(0)))
        return 0
    # Several processes, each with its own SO_REUSEPORT socket on one port, and one store.
    reserved = reserve_port(cfg.host, cfg.port)
    cfg.port = reserved[0].getsockname()[1]  # port 0 becomes the port every process binds
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="scriptgate-metrics-"))
    stop_embedded = None
    loaded = multiprocessing.get_context("fork").Event()
    siblings = Siblings.create(workers)

    def child_main(task_id: int) -> None:
        for sock in reserved:  # the supervisor's; the process binds its own
            sock.close()
        first = task_id == 0
        run_process(cfg, token, True, Startup(cfg.scripts_dir, sources if first else None, loaded, first,
                                              siblings.bind(task_id)))

    try:
        if cfg.redis is None:
            # Its URL says cache=no: the embedded server has no CLIENT TRACKING.
            cfg.redis, stop_embedded = start_embedded_process()
            cfg.store_label = "embedded (shared by the HTTP processes, not persistent)"
        return supervise(workers, child_main, siblings.reset)
    finally:
        if stop_embedded is not None:
            stop_embedded()
        for sock in reserved:
            sock.close()
