"""The script use cases of server/service/scripts.py, called directly (no HTTP): upload
(accepted, refused by the policy, refused by the reply lint, unchanged re-upload), activate,
roll back, delete, the scripts-directory deploy and the dry run, on the embedded store and
on a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.api import ALLOW, CompileIssue, RunResult
from sandbox.policy import check_source
from server.config import Config
from server.service import scripts
from server.service.state import AppState, build_state, stop
from server.store.connect import open_store
from tests.timing import SLACK_S

INVITE = "callbackBeforeInviteJoinGroupCommand"
ALLOW_ALL = "def handle(req):\n    return allow()\n"
DENY_ALL = 'def handle(req):\n    return deny(5001, "no")\n'
BACKENDS = ["embedded", "standalone"]


class LocalPool:
    """The sandbox stand-in: the policy check runs here (as ``serve --scripts`` runs it),
    every script allows."""

    async def check(self, source: str, timeout: float = 2.0) -> list[CompileIssue]:
        return check_source(source)

    async def run(self, **_: Any) -> RunResult:
        return RunResult(ALLOW)

    def stats(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        pass


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "embedded":
        return None
    return request.getfixturevalue("redis_standalone").url


@contextlib.asynccontextmanager
async def app_state(url: str | None, prefix: str, pool: Any = None) -> AsyncIterator[AppState]:
    store = await open_store(url, prefix=prefix, op_timeout=SLACK_S) if url else await open_store(
        None, prefix=prefix, isolated=True)
    state = await build_state(Config(), "token", store=store, pool=pool or LocalPool())
    try:
        await state.table.refresh()
        yield state
    finally:
        await stop(state)


def run(url: str | None, prefix: str, test: Callable[[AppState], Awaitable[None]], pool: Any = None) -> None:
    async def main() -> None:
        async with app_state(url, prefix, pool) as state:
            await test(state)

    asyncio.run(main())


def test_script_sha_is_the_hex_the_api_always_returned() -> None:
    for source in (ALLOW_ALL, "# é ✓ 😀\n" + ALLOW_ALL):
        assert scripts.script_sha(source) == hashlib.sha256(source.encode()).hexdigest()
    assert len(scripts.script_sha("x = '\ud800'\n")) == 64  # a lone surrogate hashes, never raises


def test_upload_makes_a_live_version(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        done = await scripts.upload(state, INVITE, ALLOW_ALL, activate=True, actor="t")
        sha = hashlib.sha256(ALLOW_ALL.encode()).hexdigest()
        assert (done.status, done.to_json()) == (201, {
            "command": INVITE, "version": 1, "sha256": sha, "active": True, "warnings": [], "synced": True})
        live = state.table.get(INVITE)
        assert live is not None and (live.version, live.sha256) == (1, sha)
        draft = await scripts.upload(state, INVITE, DENY_ALL, activate=False, actor="t")
        assert (draft.version, draft.active, draft.status) == (2, False, 201)
        assert state.table.get(INVITE).version == 1  # a draft does not go live
        shown = await scripts.live_script(state, INVITE)
        assert (shown["version"], shown["source"], shown["active"]) == (1, ALLOW_ALL, True)

    run(backend, store_prefix, test)


def test_upload_refused_by_the_policy(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        with pytest.raises(scripts.InvalidScript) as refused:
            await scripts.upload(state, INVITE, "import os\n" + ALLOW_ALL, activate=True, actor="t")
        assert (refused.value.status, refused.value.code) == (422, "invalid_script")
        assert refused.value.message.startswith("line 1, col 0: ")
        assert refused.value.extra()["details"][0]["line"] == 1
        assert await state.store.list_versions(INVITE) == []

    run(backend, store_prefix, test)


def test_upload_refused_by_the_reply_lint(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        with pytest.raises(scripts.InvalidScript) as refused:
            await scripts.upload(state, INVITE, 'def handle(req):\n    return deny(5, "x")\n', activate=True,
                                 actor="t")
        assert refused.value.message.startswith("line 2, col 16: deny() errCode 5 is outside")
        assert len(refused.value.details or []) == 1
        assert await state.store.list_versions(INVITE) == []

    run(backend, store_prefix, test)


def test_unchanged_reupload_makes_no_version(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        first = await scripts.upload(state, INVITE, ALLOW_ALL, activate=True, actor="t")
        again = await scripts.upload(state, INVITE, ALLOW_ALL, activate=True, actor="t")
        assert (again.status, again.to_json()) == (200, {
            "command": INVITE, "version": first.version, "sha256": first.sha256, "active": True, "unchanged": True,
            "warnings": []})
        assert len(await state.store.list_versions(INVITE)) == 1

    run(backend, store_prefix, test)


def test_activate_rollback_delete(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        with pytest.raises(scripts.NothingToRollBack, match="no live version"):
            await scripts.rollback(state, INVITE, "t")
        await scripts.upload(state, INVITE, ALLOW_ALL, activate=True, actor="t")
        with pytest.raises(scripts.NothingToRollBack, match="first version"):
            await scripts.rollback(state, INVITE, "t")
        await scripts.upload(state, INVITE, DENY_ALL, activate=True, actor="t")
        assert await scripts.activate(state, INVITE, 1, "t") == {
            "command": INVITE, "active_version": 1, "previous_version": 2, "synced": True}
        assert state.table.get(INVITE).source == ALLOW_ALL
        assert (await scripts.rollback(state, INVITE, "t", to=2))["active_version"] == 2
        assert (await scripts.rollback(state, INVITE, "t"))["active_version"] == 1
        listed = await scripts.versions(state, INVITE)
        assert sorted((v["version"], v["active"]) for v in listed["versions"]) == [(1, True), (2, False)]
        assert await scripts.delete(state, INVITE, "t") == {
            "command": INVITE, "active": False, "previous_version": 1, "synced": True}
        assert state.table.get(INVITE) is None
        with pytest.raises(scripts.NoScript):
            await scripts.live_script(state, INVITE)
        with pytest.raises(scripts.NoVersion, match="has no version 9"):
            await scripts.version(state, INVITE, 9, "9")

    run(backend, store_prefix, test)


def test_unknown_command_is_refused_everywhere(store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        calls = [scripts.upload(state, "nope", ALLOW_ALL, activate=True, actor="t"),
                 scripts.activate(state, "nope", 1, "t"), scripts.rollback(state, "nope", "t"),
                 scripts.delete(state, "nope", "t"), scripts.live_script(state, "nope")]
        for call in calls:
            with pytest.raises(scripts.UnknownCommand) as refused:
                await call
            assert (refused.value.status, refused.value.message) == (404, "unknown callbackCommand 'nope'")

    run(None, store_prefix, test)


def test_deploy_uploads_only_what_differs_from_the_live_version(backend: str | None, store_prefix: str) -> None:
    async def test(state: AppState) -> None:
        after = "callbackAfterSendSingleMsgCommand"
        uploaded: set[str] = set()
        await scripts.deploy(state.store, {INVITE: ALLOW_ALL, after: ALLOW_ALL}, "scripts-dir", uploaded)
        assert uploaded == {INVITE, after}
        again: set[str] = set()
        await scripts.deploy(state.store, {INVITE: ALLOW_ALL, after: DENY_ALL}, "scripts-dir", again)
        assert again == {after}

    run(backend, store_prefix, test)


def test_decode_source_and_local_checks() -> None:
    assert scripts.decode_source(b"\xef\xbb\xbf" + ALLOW_ALL.encode()) == ALLOW_ALL
    for raw, message in ((b"  \n", "the script is empty"), (b"a\x00", "the script contains NUL bytes"),
                         (b"x = 1\n\xff", "the script is not UTF-8 text")):
        with pytest.raises(scripts.InvalidScript, match=message) as refused:
            scripts.decode_source(raw)
        assert refused.value.status == 422 and refused.value.details is not None
    command = scripts.find_command(scripts_catalog(), INVITE)
    assert scripts.local_problems(command, ALLOW_ALL, "main") == []
    assert scripts.local_problems(command, "import os\n", "main")[0].line == 1


def scripts_catalog() -> Any:
    from server.catalog import catalog

    return catalog()


def test_dry_run_in_a_real_sandbox_leaves_the_store_alone(store_prefix: str) -> None:
    from sandbox.host.pool import WorkerPool

    source = 'def handle(req):\n    kv.set("seen", "1")\n    print("hi")\n    return deny(5001, "no")\n'

    async def main() -> None:
        pool = WorkerPool(size=1)
        await pool.start()
        async with app_state(None, store_prefix, pool) as state:
            command = scripts.find_command(state.catalog, INVITE)
            payload = scripts.test_payload(command, {"sample": True})
            out = await scripts.test(state, command, payload, source)
            assert out["reply"]["errCode"] == 5001 and out["error"] is None
            assert out["logs"] == ["hi"] and out["kv_ops"] == 1
            assert await state.store.kv_read("default", "seen") is None  # the write went to the scratch store
            refused = await scripts.test(state, command, payload, "import os\n" + ALLOW_ALL)
            assert refused["error"]["kind"] == "policy" and refused["details"][0]["line"] == 1
            with pytest.raises(scripts.NoScript, match="send source or version"):
                await scripts.test_source(state, command, None, None)
            with pytest.raises(scripts.BadRequest, match="not both"):
                await scripts.test_source(state, command, ALLOW_ALL, 1)
            with pytest.raises(scripts.InvalidField, match="groupID must be string"):
                scripts.test_payload(command, {"payload": {"groupID": 5}})

    asyncio.run(main())


def test_handlers_and_service_do_not_import_the_app() -> None:
    """server/app.py imports the handlers; the handlers and the service never import it back."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import server.http.admin, server.http.callback, server.service.scripts, server.service.state\n"
            "assert 'server.app' not in sys.modules, sorted(m for m in sys.modules if m.startswith('server.'))\n")
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
