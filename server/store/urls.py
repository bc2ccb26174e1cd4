"""Parse a ``--redis`` URL into what the connector needs.

Schemes (the part after ``?`` is optional everywhere):

- ``redis://[[user]:password@]host[:port][/db]`` -- one Redis server over TCP.
- ``rediss://...`` -- the same over TLS; ``ssl_ca_certs=``, ``ssl_certfile=``,
  ``ssl_keyfile=``, ``ssl_cert_reqs=required|optional|none``, ``ssl_check_hostname=``.
- ``unix://[[user]:password@]/path/to/redis.sock[?db=N]`` -- a unix socket.
- ``redis+sentinel://[[user]:password@]host1:port1[,host2:port2...]/service[/db]``
  (``rediss+sentinel://`` for TLS) -- ask the Sentinels for the master of ``service``
  and follow failovers. The user/password are the Redis server's; Sentinels that need a
  password get ``sentinel_password=`` (and ``sentinel_username=``).
- ``redis+cluster://[[user]:password@]host1:port1[,host2:port2...]`` (``rediss+cluster://``
  for TLS), or ``redis://host:port?cluster=true`` -- a Redis Cluster; the hosts are seeds.

Options every scheme takes in the query string (the store's own, not passed to redis-py):
``timeout`` (seconds per operation, default 0.5), ``connect_timeout`` (default 0.5),
``cache=on|off`` (client-side cache of KV reads, default on where the server supports
tracking), ``cache_size`` (entries, default 100000), ``cache_mb`` (its size in MiB, default
64) and ``cache_ns_mb`` (what one KV namespace may use of it, default 16). Other query parameters go to
redis-py as connection options (``health_check_interval``, ``max_connections``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

STORE_OPTIONS = {"timeout", "connect_timeout", "cache", "cache_size", "cache_mb", "cache_ns_mb", "cluster",
                 "sentinel_password", "sentinel_username", "embedded"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_INT_OPTS = {"health_check_interval", "max_connections", "db"}
_FLOAT_OPTS = {"socket_timeout", "socket_connect_timeout"}
_BOOL_OPTS = {"ssl_check_hostname", "socket_keepalive", "readonly", "retry_on_timeout"}


@dataclass
class Target:
    mode: str  # standalone | sentinel | cluster
    scheme: str
    display: str  # the URL with its password masked, for logs and /healthz
    url: str | None = None  # standalone: URL for redis-py's from_url, store options removed
    hosts: list[tuple[str, int]] = field(default_factory=list)  # sentinel / cluster seeds
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    redis_options: dict[str, Any] = field(default_factory=dict)
    store_options: dict[str, str] = field(default_factory=dict)


def _bool(name: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"redis URL option {name}={value!r} is not a boolean")


def _convert(name: str, value: str) -> Any:
    try:
        if name in _INT_OPTS:
            return int(value)
        if name in _FLOAT_OPTS:
            return float(value)
    except ValueError:
        raise ValueError(f"redis URL option {name}={value!r} is not a number") from None
    if name in _BOOL_OPTS:
        return _bool(name, value)
    return value


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    out = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            host, _, rest = part[1:].partition("]")
            port = rest.lstrip(":") or str(default_port)
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", str(default_port))
        try:
            out.append((host, int(port)))
        except ValueError:
            raise ValueError(f"bad host:port {part!r} in redis URL") from None
    if not out:
        raise ValueError("redis URL names no host")
    return out


def _without_store_options(url: str, passthrough: list[tuple[str, str]]) -> str:
    """The URL exactly as written, minus ScriptGate's own query options.

    redis-py's ``from_url`` reads the result, so nothing else is rewritten: a
    round trip through ``urlunsplit`` turns ``unix:///path`` into ``unix:/path``, which
    redis-py 8 refuses.
    """
    base, _, _query = url.partition("?")
    base = base.split("#", 1)[0]
    return base + ("?" + urlencode(passthrough) if passthrough else "")


def bool_option(target: Target, name: str, default: bool) -> bool:
    value = target.store_options.get(name)
    return default if value is None else _bool(name, value)


_SCHEMES = {"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"}


def parse(url: str) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster://"
        )
    store_opts, redis_opts, passthrough = _split_query(parts.query)
    username, password, hostpart = _credentials(parts.netloc)
    masked = parts._replace(netloc=(f"{quote(username or '')}:***@" if password else "") + hostpart)
    common: dict[str, Any] = {
        "username": username, "password": password, "ssl": scheme.startswith("rediss"),
        "redis_options": redis_opts, "store_options": store_opts,
    }  # fmt: skip
    display = masked.geturl()
    cluster = scheme.endswith("+cluster") or _bool("cluster", store_opts.get("cluster", "false"))
    if scheme.endswith("+sentinel"):
        return _sentinel(scheme, display, parts.path, hostpart, common)
    if cluster:
        return _cluster(scheme, display, parts.path, hostpart, common)
    return _standalone(url, scheme, display, parts, passthrough, common)


def _split_query(query: str) -> tuple[dict[str, str], dict[str, Any], list[tuple[str, str]]]:
    """(ScriptGate's own options, redis-py's options converted, redis-py's options as written)."""
    store_opts: dict[str, str] = {}
    redis_opts: dict[str, Any] = {}
    passthrough: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in STORE_OPTIONS:
            store_opts[name] = value
        else:
            redis_opts[name] = _convert(name, value)
            passthrough.append((name, value))
    return store_opts, redis_opts, passthrough


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, the host part) of ``[[user]:password@]hosts``."""
    userinfo, _, hostpart = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        if not sep:  # redis://password@host is how some tools write it
            username, password = None, unquote(user)
    return username, password, hostpart


def _sentinel(scheme: str, display: str, path: str, hostpart: str, common: dict[str, Any]) -> Target:
    segs = [s for s in path.split("/") if s]
    if not segs:
        raise ValueError("sentinel URL needs a service name: redis+sentinel://host:port/service")
    redis_opts = common["redis_options"]
    db = int(segs[1]) if len(segs) > 1 else int(redis_opts.pop("db", 0))
    redis_opts.pop("db", None)
    return Target("sentinel", scheme, display, hosts=_hosts(hostpart, 26379), service=unquote(segs[0]), db=db,
                  **common)


def _cluster(scheme: str, display: str, path: str, hostpart: str, common: dict[str, Any]) -> Target:
    if scheme == "unix":
        raise ValueError("a Redis Cluster cannot be reached over a unix socket")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    common["redis_options"].pop("db", None)
    return Target("cluster", scheme, display, hosts=_hosts(hostpart, 6379), **common)


def _standalone(url: str, scheme: str, display: str, parts: SplitResult, passthrough: list[tuple[str, str]],
                common: dict[str, Any]) -> Target:
    if scheme != "unix":
        try:
            parts.port  # noqa: B018  (raises ValueError for a non-numeric port)
        except ValueError:
            raise ValueError(f"bad port in redis URL {display!r}") from None
        if not parts.hostname:
            raise ValueError("redis URL names no host")
    clean = _without_store_options(url, passthrough)
    db = int(common["redis_options"].get("db", 0))
    if scheme != "unix" and parts.path.strip("/"):
        try:
            db = int(parts.path.strip("/"))
        except ValueError:
            raise ValueError("the path of a redis:// URL is the database number") from None
    return Target("standalone", scheme, display, url=clean, db=db, **common)
