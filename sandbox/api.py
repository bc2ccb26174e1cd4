"""Data types shared by the sandbox and its host (the HTTP server, the CLI).

Everything that crosses the process boundary between the host and a sandbox worker is
one of these dataclasses, converted to plain JSON with ``to_wire`` / ``from_wire``. The
host never receives a live object from script code: only JSON data it re-validates.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

# Error kinds reported to users (test endpoint, recordings, metrics).
EXCEPTION = "exception"  # the script raised
BUDGET = "budget"  # a limit was hit; the message names it
INVALID_RESULT = "invalid_result"  # the script returned something the command cannot accept
POLICY = "policy"  # the sandbox blocked an operation or the source
UNAVAILABLE = "unavailable"  # the KV backend (Redis) could not be reached
ERROR_KINDS = (EXCEPTION, BUDGET, INVALID_RESULT, POLICY, UNAVAILABLE)

# Verdicts
ALLOW = "allow"
MODIFY = "modify"
DENY = "deny"
ERROR = "error"

# The errCode range of a rejection (deny): OpenIM treats a callback errCode below 100 as
# "no error" or as one of its own codes, and the field is an int32 on the Go side. The one
# definition: the worker, the reply encoder, the config check and the linter all use it.
ERRCODE_MIN, ERRCODE_MAX = 100, 2**31 - 1
# A deny's errMsg / errDlt longer than this is cut by the host (the worker passes one more
# character so the host sees it was too long and says so).
MAX_REJECT_TEXT = 4096

MAX_ERROR_MESSAGE = 512


def bounded(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """Clip a message to ``limit`` characters so no error can carry a flood of text."""
    if len(message) <= limit:
        return message
    return message[: limit - 15] + "... (truncated)"


@dataclass(frozen=True)
class Budgets:
    """Per-call limits. Defaults let ~1M simple loop steps and lists of a few 100k items pass."""

    wall_ms: int = 1000  # wall-clock time for one call, including KV round trips
    steps: int = 5_000_000  # loop iterations + function calls + items iterated
    recursion: int = 100  # nested script function calls
    max_str: int = 1_000_000  # characters in any one string built
    max_bytes: int = 1_000_000  # bytes in any one bytes object built
    max_items: int = 1_000_000  # items in any one list/dict/set/tuple built
    max_int_bits: int = 100_000  # bits in any one int built
    kv_ops: int = 1_000  # KV operations per call
    kv_key_bytes: int = 512  # UTF-8 bytes of a KV key (before namespacing)
    kv_value_bytes: int = 65_536  # UTF-8 bytes of one KV value / member / field
    log_lines: int = 100
    log_bytes: int = 16_384
    result_bytes: int = 1_048_576  # the JSON encoding of the returned value
    memory_mb: int = 512  # address-space limit of a worker process (kernel-enforced)

    def merged(self, overrides: dict[str, Any] | None) -> Budgets:
        """Return a copy with ``overrides`` applied; unknown names or bad values raise ValueError."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        clean: dict[str, int] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown budget {name!r}")
            if type(value) is not int or value <= 0:
                raise ValueError(f"budget {name!r} must be a positive integer")
            clean[name] = value
        return replace(self, **clean)

    def to_wire(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Budgets:
        return cls().merged(data)


@dataclass
class ScriptError:
    kind: str
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(slots=True)
class RunResult:
    """Outcome of one script call, as plain data.

    ``verdict`` is ``allow`` (continue unchanged), ``modify`` (continue with ``fields``),
    ``deny`` (``fields`` holds errCode/errMsg/errDlt) or ``error`` (``error`` is set).
    """

    verdict: str
    fields: dict[str, Any] = field(default_factory=dict)
    error: ScriptError | None = None
    logs: list[str] = field(default_factory=list)
    kv_ops: int = 0
    elapsed_ms: float = 0.0
    # ``fields`` as JSON when the sandbox already encoded it (its size check): the worker
    # sends these bytes instead of encoding the fields again. Not compared, not on the wire.
    fields_json: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def failed(cls, kind: str, message: str, **extra: Any) -> RunResult:
        return cls(verdict=ERROR, error=ScriptError(kind, bounded(message)), **extra)

    def to_wire(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "fields": self.fields,
            "error": self.error.to_wire() if self.error else None,
            "logs": self.logs,
            "kv_ops": self.kv_ops,
            "elapsed_ms": self.elapsed_ms,
        }


@dataclass(frozen=True)
class CompileIssue:
    """One reason a script was refused at upload: 1-based line, 0-based column."""

    line: int
    col: int
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"line": self.line, "col": self.col, "message": self.message}


class KVRefused(Exception):
    """The wire-level refusal of one KV operation (bad arguments, wrong type of key, over a
    limit), raised by validation, the store and the port. The worker turns it into the
    script-visible ``KVError`` (``sandbox.worker.kvapi``)."""


class KVUnavailable(Exception):
    """The KV backend could not be reached. Stops the script; the failure policy applies."""


class KVDeadline(Exception):
    """A port that waited (a round trip) found the call's wall-time deadline passed."""


class KVPort(Protocol):
    """How the sandbox's ``kv`` facade reaches the store. Injected; never a Redis client.

    ``call`` performs one already-validated operation (see ``sandbox.kvops.OPS``) in the
    caller's namespace and returns plain JSON data. It raises ``KVRefused`` when the store
    refuses the operation and ``KVUnavailable`` when the store cannot be reached.

    The sandbox reads the clock only now and then (an op counts as a loop tick), so a port
    that can wait must check the call's deadline itself after waiting and raise
    ``KVDeadline`` when it has passed (``sandbox.worker.main.IpcKV`` does). It runs at the
    script's stack depth: a script at the interpreter's stack limit can make RecursionError
    (or MemoryError) fire inside ``call``, and a port with state must then stay consistent
    or refuse further use.
    """

    def call(self, op: str, args: list[Any]) -> Any: ...


def script_sha(source: str) -> str:
    """A script's identity: the hex sha256 of its UTF-8 text (``surrogatepass`` so a lone
    surrogate hashes instead of raising; every other text hashes as plain UTF-8). The one
    definition: the host's upload, offline tools and the worker's compile cache all call it."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
