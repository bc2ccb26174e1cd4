"""Audit entries as stream fields, and back."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from server.store.base import AuditEntry, StoreError

AUDIT_MAXLEN = 100_000  # approximate cap (XADD MAXLEN ~)
STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")


def fields(actor: str, action: str, target: str, before: int | None = None, after: int | None = None,
           detail: dict[str, Any] | None = None) -> dict[str, str]:
    return {
        "ts": repr(time.time()),
        "actor": str(actor)[:200],
        "action": action,
        "target": target,
        "before": "" if before is None else str(before),
        "after": "" if after is None else str(after),
        "detail": orjson.dumps(detail or {}).decode(),
    }


def _int(text: str | None) -> int | None:
    return int(text) if text else None


def parse(entry_id: str, data: dict[str, str]) -> AuditEntry:
    try:
        detail = orjson.loads(data.get("detail") or "{}")
    except orjson.JSONDecodeError:
        detail = {}
    return AuditEntry(
        id=entry_id,
        ts=float(data.get("ts") or 0),
        actor=data.get("actor", ""),
        action=data.get("action", ""),
        target=data.get("target", ""),
        before=_int(data.get("before")),
        after=_int(data.get("after")),
        detail=detail if isinstance(detail, dict) else {},
    )


def check_id(entry_id: str) -> str:
    if type(entry_id) is not str or not STREAM_ID_RE.fullmatch(entry_id):
        raise StoreError("invalid_cursor", "before must be an audit entry id like 1700000000000-0", 400)
    return entry_id
