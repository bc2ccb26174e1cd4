"""The offline commands that talk to a running server through the admin API: push (check
then upload what changed), export (recordings as NDJSON) and kv-snapshot."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any
from urllib.parse import quote

import orjson

from server.catalog import catalog
from server.cli.admin_client import AdminClient, AdminError, connect
from server.isotime import iso_utc
from server.offline.env import OfflineError
from server.offline.files import ScriptFile, check_scripts, collect_scripts
from server.offline.guard import EXIT_CHANGED, EXIT_OK, err, guard
from server.offline.report import Output, print_issues

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EXPORT_LIMIT = 100_000  # the server's cap per request
KV_PAGE = 1000  # keys per GET /admin/kv page (the server's maximum)


def _client(args: argparse.Namespace) -> AdminClient:
    return connect(args.server, args.token, getattr(args, "profile", None), args.timeout)


@guard
def cmd_push(args: argparse.Namespace) -> int:
    cat = catalog()
    items = collect_scripts(args.target, args.command, cat)
    check_scripts(items, cat, args.openim)
    for item in items:
        print_issues(item)
    errors = sum(len(i.errors) for i in items)
    warnings = sum(len(i.warnings) for i in items)
    if errors or (args.strict and warnings):
        why = f"{errors} error(s)" if errors else f"{warnings} warning(s) (--strict)"
        err(f"nothing uploaded: {why}")
        return EXIT_CHANGED
    client = _client(args)
    failed = sum(1 for item in items if not _push_one(client, item, args.dry_run, args.draft))
    return EXIT_CHANGED if failed else EXIT_OK


def _push_one(client: AdminClient, item: ScriptFile, dry_run: bool, draft: bool) -> bool:
    """Upload one checked script unless the live version has its sha256; False: the server
    refused it (its findings printed as FILE:LINE:COL)."""
    assert item.command is not None
    live = client.get_or_none(f"/admin/scripts/{item.command}")
    live_version = live.get("version") if isinstance(live, dict) else None
    if isinstance(live, dict) and live.get("sha256") == item.sha256:
        print(f"{item.command}: unchanged (live v{live_version})")
        return True
    if dry_run:
        print(f"{item.command}: would upload {item.path} (live: {f'v{live_version}' if live_version else 'none'})")
        return True
    query = {"activate": "false"} if draft else None
    try:
        body = client.request("PUT", f"/admin/scripts/{item.command}", item.source.encode("utf-8"), query)
    except AdminError as exc:
        if exc.status in (413, 422):
            for d in exc.details or []:
                print(f"{item.path}:{d.get('line')}:{d.get('col')}: error: {d.get('message')}")
            err(f"{item.command}: refused by the server: {exc}")
            return False
        raise
    if body.get("unchanged"):  # uploaded by someone else meanwhile: the server kept the live version
        print(f"{item.command}: unchanged (live v{body.get('version')})")
        return True
    state = "live" if body.get("active") else "draft"
    print(f"{item.command}: uploaded v{body.get('version')} ({state}, sha256 {str(body.get('sha256'))[:12]})")
    for w in body.get("warnings") or []:
        print(f"{item.path}:{w.get('line')}:{w.get('col')}: warning: {w.get('message')}")
    return True


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """A unix timestamp, or a duration back from now: 90s, 15m, 2h, 7d, 1w."""
    if value is None or value == "":
        return None
    m = DURATION_RE.match(value.strip())
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * DURATION_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        raise OfflineError(f"--since must be a unix timestamp or a duration like 15m, 2h, 7d (got {value!r})") from None


@guard
def cmd_export(args: argparse.Namespace) -> int:
    cat = catalog()
    for c in args.commands:
        if c not in cat:
            raise OfflineError(f"unknown callbackCommand {c!r}")
    commands = args.commands or sorted(cat.commands)
    since = parse_since(args.since)
    if not 1 <= args.limit <= MAX_EXPORT_LIMIT:
        raise OfflineError(f"--limit must be between 1 and {MAX_EXPORT_LIMIT}")
    client = _client(args)
    out = Output(args.output)
    counts: dict[str, int] = {}
    try:
        for c in commands:
            lines = 0
            tail = b"\n"
            for chunk in client.stream(f"/admin/recordings/{c}", {"limit": args.limit, "since": since}):
                out.write(chunk)
                lines += chunk.count(b"\n")
                tail = chunk[-1:]
            if tail != b"\n":  # keep one record per line across commands
                out.write(b"\n")
                lines += 1
            if lines:
                counts[c] = lines
        out.finish()
    except BaseException:
        out.abort()
        raise
    total = sum(counts.values())
    where = args.output if out.path is not None else "stdout"
    detail = ", ".join(f"{c}: {n}" for c, n in counts.items())
    print(f"exported {total} record(s) to {where}" + (f" ({detail})" if detail else ""), file=sys.stderr)
    return EXIT_OK


@guard
def cmd_kv_snapshot(args: argparse.Namespace) -> int:
    client = _client(args)
    keys: list[dict[str, Any]] = []
    cursor: str = "0"
    seen_cursors: set[str] = set()
    missing: list[str] = []
    while True:
        page = client.request(
            "GET", "/admin/kv", query={"namespace": args.namespace, "prefix": args.prefix, "limit": KV_PAGE, "cursor": cursor}
        )
        for entry in page.get("keys") or []:
            key = entry["key"]
            # One key, quoted as a single path segment ("/" included).
            item = client.get_or_none(f"/admin/kv/{quote(key, safe='')}", {"namespace": args.namespace})
            if item is None:  # expired or deleted since the scan (or not addressable by URL)
                missing.append(key)
                continue
            keys.append({"key": item["key"], "type": item["type"], "value": item["value"], "ttl": item.get("ttl")})
        cursor = str(page.get("cursor") or "0")
        if cursor == "0" or cursor in seen_cursors:
            break
        seen_cursors.add(cursor)
    keys.sort(key=lambda k: k["key"])
    doc = {"namespace": args.namespace, "taken_at": iso_utc(time.time()), "server": client.server, "keys": keys}
    out = Output(args.output)
    try:
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        out.finish()
    except BaseException:
        out.abort()
        raise
    where = args.output if out.path is not None else "stdout"
    print(f"snapshot of {len(keys)} key(s) in namespace {args.namespace!r} written to {where}", file=sys.stderr)
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"warning: {len(missing)} listed key(s) could not be read and are not in the snapshot "
              f"(expired meanwhile?): {shown}", file=sys.stderr)
    return EXIT_OK


