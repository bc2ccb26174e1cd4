"""ISO-8601 UTC timestamps in the admin JSON."""

from __future__ import annotations

from server.isotime import iso_utc
from server.store.base import AuditEntry, ScriptMeta, VersionInfo
from server.store.health import Health

T = 1796528215.1239  # 2026-12-06T03:36:55.1239Z


def test_format_milliseconds_utc_z() -> None:
    assert iso_utc(T) == "2026-12-06T03:36:55.123Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(None) is None


def test_milliseconds_are_truncated_never_rounded_up() -> None:
    assert iso_utc(1796528215.9999) == "2026-12-06T03:36:55.999Z"
    assert iso_utc(1796572799.9996) == "2026-12-06T15:59:59.999Z"


def test_iso_strings_sort_like_the_times() -> None:
    times = [T + d for d in (-86400 * 400, -1.5, -0.001, 0, 0.5, 3600)]
    assert sorted(iso_utc(t) for t in times) == [iso_utc(t) for t in sorted(times)]


def test_admin_json_carries_iso_times() -> None:
    assert VersionInfo("c", 1, "s", 3, T, "a").to_json()["created_at"] == "2026-12-06T03:36:55.123Z"
    assert ScriptMeta("c", 1, 1, [1], T).to_json()["updated_at"] == "2026-12-06T03:36:55.123Z"
    assert AuditEntry("1-0", T, "a", "upload", "c").to_json()["ts"] == "2026-12-06T03:36:55.123Z"
    health = Health()
    health.ok()
    doc = health.to_json()
    assert doc["down_since"] is None and isinstance(doc["last_ok"], str) and doc["last_ok"].endswith("Z")
