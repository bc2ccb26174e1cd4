"""Admin endpoints for scripts (``/admin/scripts/...``): each parses its request and calls
one script use case of server/service/scripts.py, whose refusals (``ScriptRequestError``)
AdminHandler answers as JSON errors."""

from __future__ import annotations

import tornado.web

from server.http.admin_base import AdminHandler, HTTPFail, bool_arg, int_arg
from server.service import scripts


class ScriptsHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self) -> None:
        await self._call(self._get)

    async def _get(self) -> None:
        found = await self.state.store.list_scripts()
        self.send({"scripts": [m.to_json() for m in found]})


@tornado.web.stream_request_body
class ScriptHandler(AdminHandler):
    query = {"GET": frozenset(), "PUT": frozenset({"activate"}), "DELETE": frozenset()}
    limited_by = "command"

    def limit_for_request(self) -> int:
        if self.request.method == "PUT":
            return self.state.config.max_script_bytes
        return super().limit_for_request()

    def too_large(self, limit: int) -> None:
        self.json_error(413, "payload_too_large", f"script is larger than {limit} bytes (max_script_bytes)")

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def put(self, name: str) -> None:
        await self._call(self._put, name)

    async def delete(self, name: str) -> None:
        await self._call(self._delete, name)

    async def _get(self, name: str) -> None:
        self.send(await scripts.live_script(self.state, name))

    async def _put(self, name: str) -> None:
        scripts.find_command(self.state.catalog, name)
        activate = bool_arg(self.get_query_argument("activate", None), True, "activate")
        source = scripts.decode_source(self.body)
        done = await scripts.upload(self.state, name, source, activate=activate, actor=self.actor())
        self.send(done.to_json(), done.status)

    async def _delete(self, name: str) -> None:
        self.send(await scripts.delete(self.state, name, self.actor()))


class VersionsHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self, name: str) -> None:
        await self._call(self._get, name)

    async def _get(self, name: str) -> None:
        self.send(await scripts.versions(self.state, name))


class VersionHandler(AdminHandler):
    query = {"GET": frozenset()}

    async def get(self, name: str, number: str) -> None:
        await self._call(self._get, name, number)

    async def _get(self, name: str, number: str) -> None:
        scripts.find_command(self.state.catalog, name)
        self.send(await scripts.version(self.state, name, int_arg(number, 0, 1, 2**53, "version"), number))


@tornado.web.stream_request_body
class ActivateHandler(AdminHandler):
    query = {"POST": frozenset()}
    limited_by = "command"

    async def post(self, name: str) -> None:
        await self._call(self._post, name)

    async def _post(self, name: str) -> None:
        scripts.find_command(self.state.catalog, name)
        body = self.json_body()
        version = body.get("version") if isinstance(body, dict) else None
        if type(version) is not int or version < 1:
            raise HTTPFail(400, "bad_request", 'body must be {"version": <positive integer>}')
        self.send(await scripts.activate(self.state, name, version, self.actor()))


@tornado.web.stream_request_body
class TestHandler(AdminHandler):
    query = {"POST": frozenset()}
    limited_by = "command"

    async def post(self, name: str) -> None:
        await self._call(self._post, name)

    async def _post(self, name: str) -> None:
        command = scripts.find_command(self.state.catalog, name)
        body = self.json_body()
        if not isinstance(body, dict):
            raise HTTPFail(400, "bad_request",
                           'body must be {"payload": {...} or "sample": true, "source"?: str, "version"?: int}')
        payload = scripts.test_payload(command, body)
        source = await scripts.test_source(self.state, command, body.get("source"), body.get("version"))
        self.send(await scripts.test(self.state, command, payload, source))
