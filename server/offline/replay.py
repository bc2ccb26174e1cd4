"""Replay of recorded callbacks through a script, offline, and the report of what changes.

Input is NDJSON as exported by ``GET /admin/recordings/{command}`` (``scriptgate export``):
one record per line, ``{"ts", "command", "operationID", "request", "reply", "version",
"verdict", "error_kind", "error", "elapsed_ms"}``. A line that is a bare callback request
(an object with ``callbackCommand`` and no ``request``) is replayed too, without a
baseline to compare against. Corrupt lines are reported with their line number and
skipped; the rest is still replayed.

Each record's request runs through ``OfflineEnv.run`` (the server's dispatch path: same
sandbox, budgets, deadline, failure policy and ``verdict_reply``); the new verdict and
changed fields are compared with the recorded ``verdict`` and ``reply``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from sandbox.api import ALLOW, DENY, ERROR, MODIFY
from server.catalog import Catalog, Command
from server.recorder import REDACTED
from server.service.callbacks import NO_SCRIPT, Outcome

COMMON_FIELDS = frozenset(("actionCode", "errCode", "errMsg", "errDlt", "nextCode"))
VERDICTS = (ALLOW, MODIFY, DENY, ERROR, NO_SCRIPT)

# Categories, in the order the summary table shows them.
UNCHANGED = "unchanged"
TO_DENY = "allow -> deny"  # allow, modify or none before; deny now
TO_ALLOW = "deny -> allow"  # deny before; allow or modify now
MODIFY_CHANGED = "modify changes"  # both continue, but the changed fields differ
DENY_CHANGED = "deny changes"  # both deny, with a different errCode/errMsg/errDlt
NEW_ERROR = "errors (new)"  # the new run failed; the recorded one did not
SAME_ERROR = "errors (also when recorded)"
FIXED = "errors fixed"  # the recorded run failed; the new one does not
NO_BASELINE = "no baseline"  # a bare request: nothing to compare with
CATEGORIES = (UNCHANGED, TO_DENY, TO_ALLOW, MODIFY_CHANGED, DENY_CHANGED, NEW_ERROR, SAME_ERROR, FIXED, NO_BASELINE)
CHANGED = frozenset((TO_DENY, TO_ALLOW, MODIFY_CHANGED, DENY_CHANGED, FIXED))

EXIT_OK, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2
MAX_SHOWN_LINE_ERRORS = 20
MAX_KEPT_LINE_ERRORS = 1000
SHOW_LIMIT = 80  # characters of one JSON value in a text diff


# --- reading ---------------------------------------------------------------------------


@dataclass
class Record:
    line: int
    command: str
    operation_id: str
    request: dict[str, Any]
    verdict: str | None  # recorded verdict; None: bare request, no baseline
    reply: dict[str, Any] | None
    error_kind: str | None = None
    elapsed_ms: float | None = None
    redacted: bool = False
    version: int | None = None  # script version that answered when recorded


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


def parse_line(raw: bytes, line: int) -> Record | LineError | None:
    """One NDJSON line: a Record, a LineError, or None for a blank line."""
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError(line, "not valid JSON")
    if type(data) is not dict:
        return LineError(line, "not a JSON object")
    if "request" not in data:
        if type(data.get("callbackCommand")) is str:  # a bare request, e.g. a saved payload
            return Record(line, data["callbackCommand"], str(data.get("operationID") or ""), data, None, None)
        return LineError(line, 'not a recording: no "request" object')
    request, command = data["request"], data.get("command")
    if type(request) is not dict:
        return LineError(line, '"request" is not a JSON object')
    if command is None:
        command = request.get("callbackCommand")
    if type(command) is not str or not command:
        return LineError(line, 'no "command" (and no request.callbackCommand)')
    verdict, reply = data.get("verdict"), data.get("reply")
    if verdict is not None and verdict not in VERDICTS:
        return LineError(line, f'unknown verdict {str(verdict)[:20]!r} (expected {"/".join(VERDICTS)})')
    if reply is not None and type(reply) is not dict:
        return LineError(line, '"reply" is not a JSON object')
    if verdict is None:
        reply = None  # without a verdict a reply cannot be interpreted
    kind = data.get("error_kind")
    elapsed = data.get("elapsed_ms")
    return Record(
        line=line,
        command=command,
        operation_id=str(data.get("operationID") or request.get("operationID") or ""),
        request=request,
        verdict=verdict,
        reply=reply,
        error_kind=kind if type(kind) is str else None,
        elapsed_ms=float(elapsed) if type(elapsed) in (int, float) else None,
        version=data["version"] if type(data.get("version")) is int else None,
        redacted=REDACTED_JSON in raw,
    )


REDACTED_JSON = orjson.dumps(REDACTED)


def read_recordings(stream: IO[bytes]) -> tuple[list[Record], list[LineError]]:
    records: list[Record] = []
    errors: list[LineError] = []
    for number, raw in enumerate(stream, 1):
        item = parse_line(raw, number)
        if item is None:
            continue
        if type(item) is LineError:
            errors.append(item)
        else:
            records.append(item)  # type: ignore[arg-type]
    return records, errors


def infer_command(
    catalog: Catalog, explicit: str | None, script_name: str | None, records: Iterable[Record]
) -> tuple[str, str]:
    """The command the script is for: ``--command``, else the script's file name
    (``<callbackCommand>.py``), else the records' command if they all agree.
    Returns (command, how it was decided); raises ValueError with a one-line reason."""
    if explicit:
        if explicit not in catalog:
            raise ValueError(f"unknown callbackCommand {explicit!r}")
        return explicit, "--command"
    if script_name and script_name in catalog:
        return script_name, "script file name"
    seen = Counter(r.command for r in records)
    if len(seen) == 1:
        (only,) = seen
        if only not in catalog:
            raise ValueError(f"the recordings are for {only!r}, which is not an OpenIM callbackCommand")
        return only, "recordings"
    if not seen:
        raise ValueError("cannot tell the script's command: name the file <callbackCommand>.py or pass --command")
    listed = ", ".join(f"{c} ({n})" for c, n in seen.most_common(5))
    raise ValueError(f"the recordings hold several commands ({listed}); pass --command")


# --- comparing -------------------------------------------------------------------------


@dataclass
class Side:
    """One run's result as OpenIM would see it."""

    verdict: str  # allow | modify | deny | error | none
    fields: dict[str, Any] = field(default_factory=dict)  # changed fields (continue replies)
    deny: tuple[Any, Any, Any] | None = None  # errCode, errMsg, errDlt
    error: str | None = None  # "kind: message" for errors

    @property
    def effective(self) -> str:
        """allow/modify/deny/error: 'none' (no script was live) answered like allow."""
        return ALLOW if self.verdict == NO_SCRIPT else self.verdict

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict}
        if self.fields:
            out["fields"] = self.fields
        if self.deny is not None:
            out["errCode"], out["errMsg"], out["errDlt"] = self.deny
        if self.error is not None:
            out["error"] = self.error
        return out


def _split_reply(verdict: str, reply: dict[str, Any] | None) -> tuple[dict[str, Any], tuple[Any, Any, Any] | None]:
    if not reply:
        return {}, None
    if verdict == DENY:
        return {}, (reply.get("errCode"), reply.get("errMsg", ""), reply.get("errDlt", ""))
    if verdict == MODIFY:
        return {k: v for k, v in reply.items() if k not in COMMON_FIELDS}, None
    return {}, None


def old_side(record: Record, is_before: bool) -> Side | None:
    if record.verdict is None:
        return None
    # After callbacks always answer the plain ack: the recorded reply says nothing
    # about the script's fields, so only the verdict is compared.
    fields, deny = _split_reply(record.verdict, record.reply if is_before else None)
    error = record.error_kind if record.verdict == ERROR else None
    return Side(record.verdict, fields, deny, error)


def new_side(outcome: Outcome, is_before: bool) -> Side:
    fields, deny = _split_reply(outcome.verdict, outcome.reply if is_before else None)
    err = outcome.error
    return Side(outcome.verdict, fields, deny, f"{err.kind}: {err.message}" if err else None)


@dataclass(frozen=True)
class FieldDiff:
    name: str
    old: Any
    new: Any
    old_set: bool  # False: the old reply did not set the field
    new_set: bool

    def to_json(self) -> dict[str, Any]:
        return {"field": self.name, "old": self.old, "new": self.new, "old_set": self.old_set, "new_set": self.new_set}


_MISSING = object()


class Comparer:
    """Compares two runs of one command the way OpenIM would see their replies.

    A changed field counts by its effect: a reply that leaves ``invitedUserIDs`` out and
    one that echoes the request's list are the same to OpenIM. Fields OpenIM applies
    even when absent (``echoed`` in callbacks.json, e.g. groupID in set-group-info)
    are compared literally, because there leaving one out does change the outcome.
    """

    def __init__(self, command: Command) -> None:
        self.command = command
        self.literal = set(command.echoed)
        # Reply field -> request field, where OpenIM names them differently.
        self.request_name = {reply: req for req, reply in command.reply_names.items()}

    def _effective(self, name: str, fields: dict[str, Any], request: dict[str, Any]) -> Any:
        if name in fields:
            return fields[name]
        if name in self.literal:
            return _MISSING
        return request.get(self.request_name.get(name, name), _MISSING)

    def diff_fields(self, old: dict[str, Any], new: dict[str, Any], request: dict[str, Any]) -> list[FieldDiff]:
        out = []
        for name in sorted(set(old) | set(new)):
            o, n = self._effective(name, old, request), self._effective(name, new, request)
            if o == n or o is REDACTED or n is REDACTED or o == REDACTED or n == REDACTED:
                continue  # same effect, or a redacted recording cannot tell: not a change
            out.append(
                FieldDiff(name, None if o is _MISSING else o, None if n is _MISSING else n, name in old, name in new)
            )
        return out

    def classify(self, old: Side | None, new: Side, request: dict[str, Any]) -> tuple[str, list[FieldDiff]]:
        if new.verdict == ERROR:
            return (SAME_ERROR if old is not None and old.verdict == ERROR else NEW_ERROR), []
        if old is None:
            return NO_BASELINE, []
        before, after = old.effective, new.effective
        if before == ERROR:
            return FIXED, []
        if after == DENY and before != DENY:
            return TO_DENY, []
        if before == DENY and after != DENY:
            return TO_ALLOW, []
        if before == DENY:
            changed = any(o != n and o != REDACTED for o, n in zip(old.deny or (), new.deny or (), strict=False))
            return (DENY_CHANGED if changed else UNCHANGED), []
        diffs = self.diff_fields(old.fields, new.fields, request)
        return (MODIFY_CHANGED if diffs else UNCHANGED), diffs


@dataclass
class Change:
    line: int
    operation_id: str
    category: str
    old: Side | None
    new: Side
    diffs: list[FieldDiff] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.operation_id or f"line {self.line}"

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "operationID": self.operation_id,
            "category": self.category,
            "old": self.old.to_json() if self.old else None,
            "new": self.new.to_json(),
            "diff": [d.to_json() for d in self.diffs],
        }

    def text(self) -> str:
        old, new = self.old, self.new
        head = f"{self.name}  "
        if old is None:
            return head + f"{new.verdict}{_detail(new)}  (no recorded verdict)"
        if self.category == MODIFY_CHANGED:
            arrow = MODIFY if old.verdict == new.verdict else f"{old.verdict} -> {new.verdict}"
            parts = [_field_text(d) for d in self.diffs] or ["(no field changes)"]
            return head + f"{arrow}: " + "; ".join(parts)
        if self.category == DENY_CHANGED:
            assert old.deny is not None and new.deny is not None
            parts = [
                f"{label} {_show(o)} -> {_show(n)}"
                for label, o, n in zip(("errCode", "errMsg", "errDlt"), old.deny, new.deny, strict=True)
                if o != n
            ]
            return head + "deny: " + "; ".join(parts)
        text = head + f"{old.verdict} -> {new.verdict}{_detail(new)}"
        if self.category == FIXED and old.error:
            text += f"  (recorded error: {old.error})"
        return text


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= SHOW_LIMIT else text[: SHOW_LIMIT - 3] + "..."


def _detail(side: Side) -> str:
    if side.deny is not None:
        code, msg, dlt = side.deny
        extra = f" {_show(dlt)}" if dlt else ""
        return f"  (errCode {code} {_show(msg)}{extra})"
    if side.error is not None:
        return f"  ({side.error})"
    if side.fields:
        return "  (" + ", ".join(f"{k}={_show(v)}" for k, v in sorted(side.fields.items())) + ")"
    return ""


def _field_text(d: FieldDiff) -> str:
    def one(value: Any, is_set: bool) -> str:
        if is_set:
            return _show(value)
        return "(not set)" if value is None else f"(as sent: {_show(value)})"

    return f"{d.name} {one(d.old, d.old_set)} -> {one(d.new, d.new_set)}"


# --- running ---------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal stream, redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: int, stream: IO[str] | None = None, label: str = "replay") -> None:
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        filled = int(self.WIDTH * done / self.total)
        eta = (self.total - done) / rate if rate > 0 else 0
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} "
            f"{100 * done // self.total:3d}%  {rate:,.0f} rec/s  eta {eta:,.0f}s "
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (self.WIDTH + 70) + "\r")
            self.stream.flush()


@dataclass
class Summary:
    read: int = 0  # records read (valid lines)
    replayed: int = 0
    corrupt: int = 0  # lines that could not be used
    redacted: int = 0  # replayed records with redacted fields
    skipped: Counter[str] = field(default_factory=Counter)  # other commands -> count
    versions: Counter[int] = field(default_factory=Counter)  # recorded script version -> count
    counts: Counter[str] = field(default_factory=Counter)  # category -> count
    # "old -> new" as the per-record lines print it, for the records of TO_DENY and TO_ALLOW:
    # those categories group several transitions (modify -> deny is an "allow -> deny"), and
    # the summary names them so its totals add up to the lines above it.
    arrows: Counter[str] = field(default_factory=Counter)
    times_new: list[float] = field(default_factory=list)
    times_old: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(self.counts[c] for c in CHANGED)

    @property
    def rate(self) -> float:
        return self.replayed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "records_read": self.read,
            "replayed": self.replayed,
            "corrupt_lines": self.corrupt,
            "skipped_other_commands": dict(self.skipped),
            "redacted_records": self.redacted,
            "recorded_versions": {str(v): n for v, n in sorted(self.versions.items())},
            "categories": {c: self.counts[c] for c in CATEGORIES},
            "transitions": dict(sorted(self.arrows.items())),
            "changed": self.changed,
            "ms_per_callback": {"new": _stats(self.times_new), "recorded": _stats(self.times_old)},
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.rate, 1),
        }


def _arrows(category: str, arrows: Counter[str]) -> str:
    """The transitions a TO_DENY / TO_ALLOW total is made of, when it is more than its label."""
    if category not in (TO_DENY, TO_ALLOW):
        return ""
    target = category.rsplit(" ", 1)[1]
    mine = {a: n for a, n in arrows.items() if (a.endswith(" -> deny")) == (target == "deny")}
    if not mine or set(mine) == {category}:
        return ""
    return "(" + ", ".join(f"{a}: {n}" for a, n in sorted(mine.items())) + ")"


def _versions(versions: Counter[int]) -> str:
    if not versions:
        return ""
    shown = ", ".join(f"v{v}: {n}" for v, n in sorted(versions.items(), reverse=True)[:4])
    return f"(recorded with {shown}{', ...' if len(versions) > 4 else ''})"


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"mean": round(sum(ordered) / len(ordered), 3), "p95": round(p95, 3)}


@dataclass
class ReplayReport:
    script: str
    command: str
    recordings: str
    how_command: str
    summary: Summary
    changes: list[Change]  # every record not "unchanged", in file order
    line_errors: list[LineError]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        s = self.summary
        if s.corrupt or s.counts[NEW_ERROR] or s.replayed == 0:
            return EXIT_ERROR
        return EXIT_CHANGED if s.changed else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "command": self.command,
            "recordings": self.recordings,
            "summary": self.summary.to_json(),
            "changes": [c.to_json() for c in self.changes],
            "line_errors": [{"line": e.line, "message": e.message} for e in self.line_errors[:MAX_KEPT_LINE_ERRORS]],
            "notes": self.notes,
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        s = self.summary
        out = [c.text() for c in self.changes]
        if out:
            out.append("")
        out.append(f"replay of {self.script} ({self.command}) against {self.recordings}")
        rows: list[tuple[str, Any, str]] = [
            ("records read", s.read, ""),
            ("replayed", s.replayed, _versions(s.versions)),
        ]
        if s.skipped:
            detail = ", ".join(f"{c}: {n}" for c, n in s.skipped.most_common(3))
            more = "" if len(s.skipped) <= 3 else f", +{len(s.skipped) - 3} more"
            rows.append(("skipped (other commands)", sum(s.skipped.values()), f"({detail}{more})"))
        if s.corrupt:
            rows.append(("corrupt lines", s.corrupt, "(see stderr)"))
        rows.append(("", "", ""))
        for cat in CATEGORIES:
            if cat in (UNCHANGED, TO_DENY, TO_ALLOW, MODIFY_CHANGED, NEW_ERROR) or s.counts[cat]:
                rows.append((cat, s.counts[cat], _arrows(cat, s.arrows)))
        width = max(len(r[0]) for r in rows) + 2
        for label, value, note in rows:
            out.append(f"  {label:<{width}}{value:>8}  {note}".rstrip() if label else "")
        new, old = _stats(s.times_new), _stats(s.times_old)
        if new:
            timing = f"  ms per callback: mean {new['mean']}, p95 {new['p95']}"
            if old:
                timing += f" (recorded: mean {old['mean']}, p95 {old['p95']})"
            out.append(timing)
        out.append(f"  {s.replayed} records in {s.seconds:.2f} s ({s.rate:,.0f} records/s)")
        out.extend(self.notes)
        out.append(self.verdict_line())
        return "\n".join(out)

    def verdict_line(self) -> str:
        s = self.summary
        if s.replayed == 0:
            return "result: nothing was replayed (exit 2)"
        problems = []
        if s.corrupt:
            problems.append(f"{s.corrupt} corrupt lines")
        if s.counts[NEW_ERROR]:
            problems.append(f"{s.counts[NEW_ERROR]} new script errors")
        changed = f"{s.changed} of {s.replayed} replies would change"
        if problems:
            return f"result: {', '.join(problems)}; {changed} (exit 2)"
        return f"result: {changed} (exit {self.exit_code})"


async def replay(
    env: Any,
    command: Command,
    records: list[Record],
    *,
    jobs: int,
    progress: Progress | None = None,
) -> tuple[Summary, list[Change]]:
    """Run every record of ``command`` through the script loaded in ``env``.

    ``jobs`` records are in flight at once (one per sandbox worker is enough to keep
    them all busy); with ``jobs=1`` records run strictly in file order, which matters for
    scripts whose KV writes (counters, rate limits) affect later records.
    """
    summary = Summary()
    summary.read = len(records)
    todo: list[Record] = []
    for r in records:
        if r.command != command.name:
            summary.skipped[r.command] += 1
        else:
            todo.append(r)
    results: list[Change | None] = [None] * len(todo)
    times: list[float] = [0.0] * len(todo)
    next_index = 0
    done = 0
    is_before = command.is_before
    comparer = Comparer(command)

    async def worker() -> None:
        nonlocal next_index, done
        while next_index < len(todo):
            i = next_index
            next_index += 1
            record = todo[i]
            outcome = await env.run(command, orjson.dumps(record.request))
            old = old_side(record, is_before)
            new = new_side(outcome, is_before)
            category, diffs = comparer.classify(old, new, record.request)
            results[i] = Change(record.line, record.operation_id, category, old, new, diffs)
            times[i] = outcome.elapsed_ms
            done += 1
            if progress is not None:
                progress.update(done)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(jobs, len(todo) or 1)))))
    finally:
        if progress is not None:
            progress.update(done, force=True)
            progress.close()
    summary.seconds = time.perf_counter() - started
    summary.replayed = len(todo)
    summary.times_new = times
    summary.times_old = [r.elapsed_ms for r in todo if r.elapsed_ms is not None]
    summary.redacted = sum(1 for r in todo if r.redacted)
    summary.versions = Counter(r.version for r in todo if r.version is not None)
    changes: list[Change] = []
    for change in results:
        assert change is not None
        summary.counts[change.category] += 1
        if change.category in (TO_DENY, TO_ALLOW) and change.old is not None:
            summary.arrows[f"{change.old.verdict} -> {change.new.verdict}"] += 1
        if change.category != UNCHANGED:
            changes.append(change)
    return summary, changes


def check_requests(command: Command, records: list[Record]) -> tuple[list[Record], list[LineError]]:
    """Drop records whose request the server would have refused (400) before any script ran."""
    kept: list[Record] = []
    errors: list[LineError] = []
    for r in records:
        problem = command.check_request(r.request) if r.command == command.name else None
        if problem:
            errors.append(LineError(r.line, f"request does not fit {command.name}: {problem}"))
        else:
            kept.append(r)
    return kept, errors
