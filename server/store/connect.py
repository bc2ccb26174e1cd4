"""Open the store for a ``--redis`` URL (see ``urls.py`` for the schemes).

- ``open_store(None)``: the embedded store, an in-process fakeredis server shared by every
  store opened in this process (``isolated=True`` gives a private one, e.g. for dry
  runs). Nothing survives the process.
- ``start_embedded_server()``: for several server processes and no Redis: serves a fakeredis
  server on a unix socket in a fresh private directory (mode 0700, the socket 0600), so
  only this instance's processes (and root) can reach it: a loopback TCP port would let
  any local user change scripts and the live version without the admin token. The
  children open ``unix://<dir>/store.sock?embedded=yes&cache=no``; ``embedded=yes``
  makes ``/healthz`` say ``"mode": "embedded", "persistent": false``. Limits: a thread per
  connection (GIL-bound, fine for development and small deployments), pub/sub messages
  forwarded every 10 ms, no CLIENT TRACKING (so no client-side cache), no persistence,
  and it must outlive the children.
- Real Redis: short socket timeouts (``timeout``/``connect_timeout``, 0.5 s by default)
  so a dead, paused or slow server fails a call fast instead of hanging it; a failed
  connection is retried once at once (a pooled connection Redis closed while idle) and
  re-established on the next call otherwise. ``open_store`` does not need Redis to be up:
  the store starts unhealthy and recovers by itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import fakeredis
import redis.asyncio as aredis
from fakeredis._clients._tcp_server import TCPFakeRequestHandler  # the handler TcpFakeServer uses
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import RedisSSLContext, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from server.store import urls
from server.store.redis_store import Store
from server.store.tracking import TrackingTarget

log = logging.getLogger("scriptgate.store")

DEFAULT_TIMEOUT = 0.5
_SSL_KEYS = ("ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path",
             "ssl_check_hostname", "ssl_min_version", "ssl_ciphers")

_embedded_server: fakeredis.FakeServer | None = None


def embedded_server() -> fakeredis.FakeServer:
    global _embedded_server
    if _embedded_server is None:
        _embedded_server = fakeredis.FakeServer()
    return _embedded_server


class _UnixFakeServer(socketserver.ThreadingUnixStreamServer):
    """fakeredis's TcpFakeServer on a unix socket."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self._shutdown_event = threading.Event()
        self.fake_server = fakeredis.FakeServer(server_type="redis", version=(8, 0))
        self.client_ids = itertools.count(0)
        self.clients: dict[Any, Any] = {}
        super().__init__(path, TCPFakeRequestHandler)

    def get_request(self) -> tuple[Any, Any]:
        # Every unix client's address is "": the handler keys its per-client state by address.
        conn, _ = self.socket.accept()
        return conn, ("unix", next(self.client_ids))

    def shutdown(self) -> None:
        self._shutdown_event.set()
        super().shutdown()


def start_embedded_server() -> tuple[str, Callable[[], None]]:
    """Serve an in-memory fakeredis on a private unix socket from this process; return
    (url, stop)."""
    directory = tempfile.mkdtemp(prefix="scriptgate-store-")  # created 0700
    os.chmod(directory, 0o700)
    path = os.path.join(directory, "store.sock")
    old_mask = os.umask(0o177)
    try:
        server = _UnixFakeServer(path)
    finally:
        os.umask(old_mask)
    thread = threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True)
    thread.start()
    url = f"unix://{path}?embedded=yes&cache=no"

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        shutil.rmtree(directory, ignore_errors=True)

    return url, stop


def _retry() -> Retry:
    # One immediate retry on a connection error: it replaces a pooled connection the
    # server closed while idle (restart, failover). Timeouts are not retried: the call
    # already waited its budget.
    return Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, supported_errors=(RedisConnectionError,))


def _float(opts: dict[str, Any], target: urls.Target | None, name: str, default: float) -> float:
    if name in opts and opts[name] is not None:
        return float(opts[name])
    if target is not None and name in target.store_options:
        return float(target.store_options[name])
    return default


def _ssl_context(options: dict[str, Any]) -> Any:
    # ssl_ca_certs -> ca_certs ...: RedisSSLContext's names without the "ssl_".
    return RedisSSLContext(**{name[4:]: options[name] for name in _SSL_KEYS if name in options}).get()


async def open_store(url: str | None, prefix: str = "scriptgate", **opts: Any) -> Store:
    """Open (never fails because Redis is down; raises ValueError for a bad URL).

    Options: ``op_timeout`` and ``connect_timeout`` (seconds), ``admin_timeout``,
    ``cache`` (bool: client-side KV cache where supported), ``cache_size`` (entries),
    ``cache_mb`` / ``cache_ns_mb`` (its bounds in MiB, in all and per KV namespace),
    ``isolated`` (embedded only: a private in-memory server), ``key_bytes``,
    ``value_bytes`` (KV argument limits re-checked on the host side).
    """
    common = {k: opts[k] for k in ("key_bytes", "value_bytes", "admin_timeout") if k in opts}
    if url is None or url in ("", "embedded", "memory://"):
        server = fakeredis.FakeServer() if opts.get("isolated") else embedded_server()
        client = fakeredis.aioredis.FakeRedis(server=server, decode_responses=True)
        store = Store(client, prefix=prefix, mode="embedded", display="embedded", **common)
        await store.start()
        return store

    target = urls.parse(url)
    op_timeout = _float(opts, target, "op_timeout", _float({}, target, "timeout", DEFAULT_TIMEOUT))
    connect_timeout = _float(opts, target, "connect_timeout", op_timeout)
    cache_wanted = opts.get("cache")
    if cache_wanted is None:
        cache_wanted = urls.bool_option(target, "cache", True)
    cache_size = int(opts.get("cache_size") or target.store_options.get("cache_size") or 100_000)
    cache_bounds = {k: float(opts.get(k) or target.store_options[k]) for k in ("cache_mb", "cache_ns_mb")
                    if opts.get(k) or target.store_options.get(k)}
    base: dict[str, Any] = {
        "decode_responses": True,
        "protocol": 2,  # predictable reply shapes on every server; tracking uses its own RESP3 link
        # No per-command socket timeout: every store call is already bounded by our own
        # deadline (the KV deadline, the admin timeout of ``guarded``), and redis-py pays for
        # its own with a task (wait_for) per send and a timeout scope per read, ~8% of the
        # HTTP process's CPU per after-callback (docs/performance.md). A call cut by our
        # deadline closes its connection (redis-py disconnects on cancellation).
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout,
        "retry": _retry(),
        "client_name": "scriptgate",
    }
    provider = None
    on_close = None
    data_address = None
    monitor = None

    mode, display = target.mode, target.display
    if target.mode == "standalone":
        assert target.url is not None
        client = aredis.Redis.from_url(target.url, **base)
        provider = _standalone_provider(client)
        if urls.bool_option(target, "embedded", False):  # start_embedded_server's socket
            mode, display = "embedded", "embedded (shared by this instance's HTTP processes, private unix socket)"
    elif target.mode == "sentinel":
        assert target.service is not None
        auth = {"username": target.username, "password": target.password}
        ssl_opts = {k: v for k, v in target.redis_options.items() if k in _SSL_KEYS}
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": op_timeout, "socket_connect_timeout": connect_timeout,
            "password": target.store_options.get("sentinel_password"),
            "username": target.store_options.get("sentinel_username"),
            "decode_responses": True, "protocol": 2,
        }
        if target.ssl:
            sentinel_kwargs.update(ssl=True, **ssl_opts)
        sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_kwargs)
        client = sentinel.master_for(target.service, db=target.db, ssl=target.ssl, **auth, **base,
                                     **target.redis_options)
        ssl_ctx = _ssl_context(ssl_opts) if target.ssl else None
        pool = client.connection_pool

        async def sentinel_target() -> TrackingTarget:
            # Track the server the data connections use (redis-py's pool keeps its
            # master until a connection fails), not merely what Sentinel says now: right
            # after a failover both may claim to be master for a while.
            address = pool.master_address or await pool.get_master_address()
            host, port = address
            return TrackingTarget(host=host, port=int(port), ssl_context=ssl_ctx,
                                  server_hostname=host if ssl_ctx is not None and ssl_ctx.check_hostname else None,
                                  **auth)

        provider = sentinel_target
        data_address = lambda: pool.master_address  # noqa: E731  (set by redis-py on (re)connect)

        async def close_sentinels() -> None:
            for s in sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await s.aclose()

        on_close = close_sentinels

        async def follow_master() -> None:
            # redis-py moves to a new master only when a connection to the old one fails;
            # after a manual failover the old master keeps accepting writes until Sentinel
            # reconfigures it (seconds later), and those writes would be lost. Asking every
            # second switches the pool (and the cache's tracking link) within ~1 s.
            await pool.get_master_address()

        monitor = follow_master
    else:
        base.pop("client_name")
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            username=target.username, password=target.password, ssl=target.ssl,
            require_full_coverage=False, **base, **target.redis_options,
        )
        provider = None  # tracking is per node on a cluster: cache off (documented)

    store = Store(
        client, prefix=prefix, mode=mode, display=display, cluster=target.mode == "cluster",
        op_timeout=op_timeout, tracker_provider=provider if cache_wanted else None, cache_size=cache_size,
        **cache_bounds,
        data_address=data_address, monitor=monitor, on_close=on_close, **common,
    )
    await store.start()
    return store


def _standalone_provider(client: aredis.Redis) -> Callable[[], Any]:
    pool = client.connection_pool
    proto = pool.connection_class(**pool.connection_kwargs)  # never connected: just read its settings

    async def target() -> TrackingTarget:
        creds = await _credentials(proto)
        if isinstance(proto, UnixDomainSocketConnection):
            return TrackingTarget(path=proto.path, **creds)
        ctx = None
        if isinstance(proto, SSLConnection):
            ctx = proto.ssl_context.get()
        return TrackingTarget(host=proto.host, port=int(proto.port), ssl_context=ctx,
                              server_hostname=proto.host if ctx is not None and ctx.check_hostname else None,
                              **creds)

    return target


async def _credentials(conn: Any) -> dict[str, Any]:
    provider = getattr(conn, "credential_provider", None)
    if provider is not None:
        creds = await provider.get_credentials_async() if hasattr(provider, "get_credentials_async") \
            else provider.get_credentials()
        if len(creds) == 1:
            return {"username": None, "password": creds[0]}
        return {"username": creds[0], "password": creds[1]}
    return {"username": conn.username, "password": conn.password}

