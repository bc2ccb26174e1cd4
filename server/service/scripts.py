"""The script use cases: upload, activate, roll back, delete, test (dry run), run offline,
replay. The admin API (server/http/admin_scripts.py), ``serve --scripts DIR`` (server/serve.py),
the offline commands (server/offline/) and the CLI call these; none of them repeats a rule.

Rules stated here once:

- A script's identity is ``script_sha(source)`` (sandbox/api.py, shared with the worker).
- An upload is checked by the sandbox policy first, then by what the command's reply can
  carry (server/lint.py); either refuses it with ``InvalidScript`` (422) and every finding.
- Re-uploading the live version's source makes no new version (the store answers
  ``unchanged``), and a scripts directory uploads only what differs from the live version.

Refusals are ``ScriptRequestError`` subclasses: each carries the HTTP status and error code
the admin API answers with (``{"error": code, "message": ..., "details"?: [...]}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sandbox.api import POLICY, RunResult, script_sha
from server import lint
from server.catalog import Catalog, Command
from server.offline.kv_overlay import OverlayKV
from server.reply import continue_with
from server.service.callbacks import REPLY_MARGIN_S, Dispatcher, Outcome, verdict_reply

if TYPE_CHECKING:
    from server.offline.replay import Change, Progress, Record, Summary
    from server.service.state import AppState, OpenScratch, Pool, Store

__all__ = ["script_sha"]

JSON = dict[str, Any]


class Located(Protocol):
    """A finding with a place: sandbox.api.CompileIssue or server.lint.Finding."""

    line: int
    col: int
    message: str


# --- refusals -----------------------------------------------------------------------------


class ScriptRequestError(Exception):
    """A script request refused; ``status`` and ``code`` are what the admin API answers."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: list[JSON] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def extra(self) -> JSON:
        """The JSON error body's fields beyond error/message."""
        return {} if self.details is None else {"details": self.details}


class BadRequest(ScriptRequestError):
    pass


class InvalidField(ScriptRequestError):
    code = "invalid_field"


class UnknownCommand(ScriptRequestError):
    status, code = 404, "unknown_command"


class NoScript(ScriptRequestError):
    status, code = 404, "no_script"


class NoVersion(ScriptRequestError):
    status, code = 404, "no_version"


class TooLarge(ScriptRequestError):
    status, code = 413, "payload_too_large"


class InvalidScript(ScriptRequestError):
    status, code = 422, "invalid_script"

    def __init__(self, message: str, details: list[JSON] | None = None) -> None:
        super().__init__(message, details if details is not None else [])

    @classmethod
    def of(cls, findings: Sequence[Located]) -> InvalidScript:
        """The first problem in the message, every one in details."""
        first = findings[0]
        return cls(f"line {first.line}, col {first.col}: {first.message}",
                   [{"line": f.line, "col": f.col, "message": f.message} for f in findings])


class NothingToRollBack(ScriptRequestError):
    status, code = 409, "nothing_to_roll_back"


def find_command(catalog: Catalog, name: str) -> Command:
    command = catalog.get(name)
    if command is None:
        raise UnknownCommand(f"unknown callbackCommand {name[:80]!r}")
    return command


# --- the checks an upload must pass ---------------------------------------------------------


def decode_source(raw: bytes) -> str:
    """An uploaded body as script text: UTF-8, no NUL, not blank, BOM stripped."""
    if not raw.strip():
        raise InvalidScript("the script is empty")
    if b"\x00" in raw:
        raise InvalidScript("the script contains NUL bytes (binary upload?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidScript("the script is not UTF-8 text",
                            [{"line": line, "col": 0, "message": "invalid UTF-8 byte sequence"}]) from None
    return text.removeprefix("\ufeff")


def lint_errors(command: Command | None, source: str, openim: str) -> list[lint.Finding]:
    """What the command's reply cannot carry (server/lint.py): refuses an upload."""
    return lint.errors(command, source, openim) if command is not None else []


def local_problems(command: Command | None, source: str, openim: str) -> Sequence[Located]:
    """The upload checks run in this process, for the operator's own files (``--scripts``):
    the policy, then (if it passes) the reply lint."""
    from sandbox.policy import check_source

    return check_source(source) or lint_errors(command, source, openim)


async def check_upload(pool: Pool, command: Command, source: str, openim: str) -> None:
    """The upload checks for untrusted source: the policy in a sandbox worker (compiling
    hostile source is itself a DoS vector), then the reply lint. InvalidScript if refused."""
    issues = await pool.check(source)
    if issues:
        raise InvalidScript.of(issues)
    errors = lint_errors(command, source, openim)
    if errors:
        raise InvalidScript.of(errors)


# --- upload, activate, roll back, delete ----------------------------------------------------


@dataclass
class Uploaded:
    command: str
    version: int
    sha256: str
    active: bool
    warnings: list[JSON]
    unchanged: bool = False
    synced: bool = True

    @property
    def status(self) -> int:
        return 200 if self.unchanged else 201

    def to_json(self) -> JSON:
        head = {"command": self.command, "version": self.version, "sha256": self.sha256, "active": self.active}
        if self.unchanged:
            return {**head, "unchanged": True, "warnings": self.warnings}
        return {**head, "warnings": self.warnings, "synced": self.synced}


async def upload(state: AppState, command: str, source: str, *, activate: bool, actor: str) -> Uploaded:
    """Check ``source`` and store it as ``command``'s next version (live unless
    ``activate`` is false); this process and its siblings serve it before this returns."""
    cmd = find_command(state.catalog, command)
    openim = state.config.openim
    await check_upload(state.pool, cmd, source, openim)
    sha = script_sha(source)
    info, _before = await state.store.put_version(command, source, sha, activate, actor)
    warnings = [w.to_json() for w in lint.warnings(cmd, source, openim)]
    if info.unchanged:
        # The live version already has this source: no new version, and nothing to reload.
        return Uploaded(command, info.version, sha, True, warnings, unchanged=True)
    synced = await state.refresh_scripts() if activate else True
    return Uploaded(command, info.version, sha, activate, warnings, synced=synced)


async def deploy(store: Store, sources: Mapping[str, str], actor: str, uploaded: set[str]) -> None:
    """Make each checked ``{command: source}`` live unless the live version already has it,
    adding each command that got a new version to ``uploaded`` as it goes (so a store
    outage part-way keeps count of what went in before it; StoreUnavailable propagates and
    callers retry)."""
    active = await store.active_table()
    for command, source in sources.items():
        sha = script_sha(source)
        live = active.get(command)
        if live is not None and live.sha256 == sha:
            continue
        await store.put_version(command, source, sha, True, actor)
        uploaded.add(command)


async def activate(state: AppState, command: str, version: int, actor: str) -> JSON:
    find_command(state.catalog, command)
    before, after = await state.store.activate(command, version, actor)
    synced = await state.refresh_scripts()
    return {"command": command, "active_version": after, "previous_version": before, "synced": synced}


def rollback_target(command: str, live: int | None, to: int | None = None) -> int:
    """The version a rollback makes live: ``to``, else the live number minus one."""
    if to is not None:
        return to
    if live is None:
        raise NothingToRollBack(f"{command} has no live version to roll back from "
                                "(use `scriptgate scripts activate`)")
    if live <= 1:
        raise NothingToRollBack(f"{command}: v{live} is the first version; nothing to roll back to")
    return live - 1


async def rollback(state: AppState, command: str, actor: str, to: int | None = None) -> JSON:
    find_command(state.catalog, command)
    meta = await state.store.get_meta(command)
    target = rollback_target(command, meta.active_version if meta else None, to)
    return await activate(state, command, target, actor)


async def delete(state: AppState, command: str, actor: str) -> JSON:
    """Stop running ``command``'s script; its versions are kept."""
    find_command(state.catalog, command)
    before = await state.store.deactivate(command, actor)
    synced = await state.refresh_scripts()
    return {"command": command, "active": False, "previous_version": before, "synced": synced}


# --- reading --------------------------------------------------------------------------------


async def live_script(state: AppState, command: str) -> JSON:
    """The live version of ``command`` with its source and metadata."""
    find_command(state.catalog, command)
    meta = await state.store.get_meta(command)
    if meta is None or meta.active_version is None:
        raise NoScript(f"no live script for {command}")
    version = await state.store.get_version(command, meta.active_version)
    if version is None:
        raise NoScript(f"no live script for {command}")
    return {**meta.to_json(), **version.to_json(with_source=True), "active": True}


async def versions(state: AppState, command: str) -> JSON:
    find_command(state.catalog, command)
    found = await state.store.list_versions(command)
    meta = await state.store.get_meta(command)
    active = meta.active_version if meta else None
    return {"command": command, "active_version": active,
            "versions": [{**v.to_json(), "active": v.version == active} for v in found]}


async def version(state: AppState, command: str, number: int, shown: str) -> JSON:
    """Version ``number`` (``shown`` as the client wrote it, for the 404 message)."""
    find_command(state.catalog, command)
    info = await state.store.get_version(command, number)
    if info is None:
        raise NoVersion(f"{command} has no version {shown}")
    meta = await state.store.get_meta(command)
    active = meta.active_version if meta else None
    return {**info.to_json(with_source=True), "active": info.version == active}


# --- test (dry run) -------------------------------------------------------------------------


async def test_source(state: AppState, command: Command, source: str | None, version: int | None) -> str:
    """The source a dry run uses: the one given, else a stored version, else the live one."""
    if source is not None and version is not None:
        raise BadRequest("give either source or version, not both")
    if source is not None:
        if type(source) is not str or not source.strip():
            raise BadRequest("source must be a non-empty string")
        if len(source.encode("utf-8", "surrogatepass")) > state.config.max_script_bytes:
            raise TooLarge("source is larger than max_script_bytes")
        return source
    if version is not None:
        if type(version) is not int or version < 1:
            raise BadRequest("version must be a positive integer")
        info = await state.store.get_version(command.name, version)
        if info is None:
            raise NoVersion(f"{command.name} has no version {version}")
        return info.source
    active = state.table.get(command.name)
    if active is None:
        raise NoScript(f"no live script for {command.name}; send source or version")
    return active.source


def test_payload(command: Command, body: JSON) -> JSON:
    """The callback request of a test body: ``payload``, or the shipped sample."""
    from server.samples import sample

    use_sample = body.get("sample", False)
    if type(use_sample) is not bool:
        raise BadRequest("sample must be true or false")
    if use_sample:
        if "payload" in body:
            raise BadRequest("give either payload or sample, not both")
        payload: Any = sample(command.name)
    else:
        payload = body.get("payload")
        if type(payload) is not dict:
            raise BadRequest('payload must be a JSON object (the callback request), or send "sample": true')
    problem = command.check_request(payload)
    if problem:
        raise InvalidField(problem)
    return payload


async def test(state: AppState, command: Command, payload: JSON, source: str) -> JSON:
    """Run ``source`` on ``payload`` as the live path would, without side effects: KV
    writes go to a scratch store over the real one (reads see both), and nothing is
    recorded. The reply, logs, KV op count, time and error (with every policy finding)."""
    return await dry_run(state.dispatcher, state.pool, state.store, state.open_scratch, command, payload, source)


async def dry_run(dispatcher: Dispatcher, pool: Pool, store: Store, open_scratch: OpenScratch,
                  command: Command, payload: JSON, source: str) -> JSON:
    settings = dispatcher.settings[command.name]
    issues = await pool.check(source)
    if issues:
        first = issues[0]
        result = RunResult.failed(POLICY, f"line {first.line}, col {first.col}: {first.message}")
    else:
        scratch = await open_scratch()
        try:
            loop = asyncio.get_running_loop()
            result = await pool.run(
                source=source,
                sha256=script_sha(source),
                payload_json=orjson.dumps(payload),
                budgets=settings.budgets,
                kv=OverlayKV(store, scratch, settings.namespace),
                deadline=loop.time() + settings.deadline_ms / 1000 - REPLY_MARGIN_S,
            )
        finally:
            await scratch.close()
    if command.is_before:
        reply, _verdict, error = verdict_reply(command, settings, result, payload)
        command.with_echo(payload, reply)
    else:
        reply, error = continue_with(), result.error
    out: JSON = {
        "reply": reply,
        "logs": result.logs,
        "kv_ops": result.kv_ops,
        "elapsed_ms": result.elapsed_ms,
        "error": error.to_wire() if error else None,
    }
    if issues:
        out["details"] = [i.to_wire() for i in issues]
    return out


# --- offline: run once, replay ----------------------------------------------------------------


class OfflineRunner(Protocol):
    """What the offline use cases need of server/offline/env.py's OfflineEnv."""

    pool: Pool

    def load(self, command: Command, source: str) -> None: ...
    async def run(self, command: Command, payload_json: bytes) -> Outcome: ...


async def load_offline(env: OfflineRunner, command: Command, source: str) -> None:
    """Make ``source`` the script an offline run uses, checked as an upload's policy check
    would (InvalidScript with every finding when refused)."""
    issues = await env.pool.check(source)
    if issues:
        raise InvalidScript.of(issues)
    env.load(command, source)


async def run_offline(env: OfflineRunner, command: Command, source: str, payload: JSON,
                      loaded: Callable[[], None] | None = None) -> Outcome:
    """One callback through the server's dispatch path, offline; ``loaded`` is called once
    the script passed its check, before it runs."""
    await load_offline(env, command, source)
    if loaded is not None:
        loaded()
    return await env.run(command, orjson.dumps(payload))


async def replay(env: OfflineRunner, command: Command, source: str, records: list[Record], *, jobs: int,
                 progress: Progress | None = None) -> tuple[Summary, list[Change]]:
    """Run ``source`` on every recorded callback of ``command``: what would change."""
    from server.offline import replay as rp

    await load_offline(env, command, source)
    return await rp.replay(env, command, records, jobs=jobs, progress=progress)
