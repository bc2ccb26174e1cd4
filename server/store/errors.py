"""Which backend failures mean "Redis is not there right now" (503 / KVUnavailable).

Everything else a Redis command can raise is a refusal of that command (wrong type,
not an integer...), reported to the caller as a 4xx / KVRefused.
"""

from __future__ import annotations

import asyncio
import os

from redis import exceptions as rex

# ReadOnlyError (writing to a replica right after a failover), TryAgain / ClusterDown
# (slots moving) and LOADING are ResponseErrors in redis-py, yet they are outages.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError, MasterNotFoundError
    rex.TimeoutError,
    asyncio.TimeoutError,
    TimeoutError,
    OSError,
    rex.ReadOnlyError,
    rex.TryAgainError,
    rex.ClusterDownError,
    rex.ClusterError,
    rex.RedisClusterException,
    rex.SlotNotCoveredError,
    rex.MovedError,
    rex.AskError,
)
_UNAVAILABLE_REPLIES = ("LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "NOREPLICAS")


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, rex.ResponseError):
        return reply_text(exc).startswith(_UNAVAILABLE_REPLIES)
    return False


def describe(exc: BaseException) -> str:
    """A short, host-internal-free description for logs and /healthz."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text[:200]}" if text else name


def reason(exc: BaseException) -> str:
    """Why the store could not be reached, in a person's words: the operating system's
    message when there is one ("Connection refused", "Name or service not known"), else
    "timed out", else ``describe(exc)``."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError, rex.TimeoutError)):
            return "timed out"
        if isinstance(cause, OSError):
            # asyncio puts "Connect call failed (addr)" in strerror; the errno says it better.
            if isinstance(cause.errno, int) and cause.errno > 0:
                return os.strerror(cause.errno)
            if cause.strerror:  # getaddrinfo's negative codes: "Name or service not known"
                return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return describe(exc)


def reply_text(exc: rex.ResponseError) -> str:
    """The server's error reply without the pipeline wrapper (which quotes the command)."""
    text = str(exc)
    # A pipeline wraps the reply: "Command # 1 (SISMEMBER k a) of pipeline caused error: ('WRONGTYPE ...',)"
    _head, sep, tail = text.partition(" of pipeline caused error: ")
    if sep:
        text = tail.lstrip("('\"")
    return text
