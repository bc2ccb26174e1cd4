"""What the rest of the server needs from storage: the contract the Redis store implements.

Every piece of state lives behind this interface (scripts and versions, the live pointer,
the audit log, recordings, script KV data) so that any instance sharing one Redis can
serve any request. Admin writes are all-or-nothing; reads used on the callback hot path
(the active-script table) are cached by the caller and refreshed on change notifications.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.isotime import iso_utc


class StoreError(Exception):
    """A request the store refuses (wrong key type, unknown version...). Maps to a 4xx."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class StoreUnavailable(Exception):
    """The backend cannot be reached or timed out. Admin writes map to 503; nothing half-applied."""


@dataclass
class VersionInfo:
    command: str
    version: int
    sha256: str
    size: int
    created_at: float  # unix seconds
    author: str
    source: str | None = None  # omitted in listings
    # Set by put_version when the source is the live version's: no version was created
    # and ``version`` is the live one. Not part of the JSON: the API answers it separately.
    unchanged: bool = False

    def to_json(self, with_source: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": self.command,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": iso_utc(self.created_at),
            "author": self.author,
        }
        if with_source:
            out["source"] = self.source
        return out


@dataclass
class ScriptMeta:
    command: str
    active_version: int | None  # None: no live script (deleted, or only drafts)
    latest_version: int
    versions: list[int]
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "active_version": self.active_version,
            "latest_version": self.latest_version,
            "versions": self.versions,
            "updated_at": iso_utc(self.updated_at),
        }


@dataclass(frozen=True)
class ActiveScript:
    command: str
    version: int
    sha256: str
    source: str


@dataclass
class RegistrySnapshot:
    """The script registry as read at one moment (Store.registry_snapshot)."""

    generation: int | None  # None: the generation key is missing (flushed or never written)
    commands: set[str]
    table: dict[str, ActiveScript]
    missing: set[str]  # live pointers whose version body is missing
    restored_at: float | None = None  # the last write-back of a lost registry (unix time)
    restored: list[str] = field(default_factory=list)  # the commands it wrote back


@dataclass
class AuditEntry:
    id: str
    ts: float
    actor: str
    action: str  # upload, activate, rollback, delete, kv_put, kv_delete, kv_members
    target: str  # command or kv key
    before: int | None = None  # version before the change (scripts)
    after: int | None = None  # version after the change (scripts)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": iso_utc(self.ts),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "detail": self.detail,
        }


ChangeListener = Callable[[], Awaitable[None]]
