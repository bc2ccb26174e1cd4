"""Admin endpoints for scoped tokens (``/admin/tokens``, server/tokens.py)."""

from __future__ import annotations

import tornado.web

from server import tokens
from server.http.admin_base import AdminHandler, HTTPFail


@tornado.web.stream_request_body
class TokensHandler(AdminHandler):
    query = {"GET": frozenset(), "POST": frozenset()}

    async def get(self) -> None:
        await self._call(self._get)

    async def post(self) -> None:
        await self._call(self._post)

    async def _get(self) -> None:
        stored = await self.state.store.tokens_all()
        found = [t for t in (tokens.Token.load(i, raw) for i, raw in stored.items()) if t is not None]
        found.sort(key=lambda t: (t.created_at, t.name))
        self.send({"tokens": [t.to_json() for t in found]})

    async def _post(self) -> None:
        try:
            token, secret = tokens.new_token(self.json_body(), self.state.catalog.commands)
        except tokens.TokenRequestError as exc:
            raise HTTPFail(400, "bad_request", str(exc)) from None
        if len(await self.state.store.tokens_all()) >= tokens.MAX_TOKENS:
            raise HTTPFail(409, "too_many_tokens", f"at most {tokens.MAX_TOKENS} tokens; revoke some first")
        detail = {"id": token.id, "scopes": list(token.scopes), "commands": list(token.commands),
                  "namespaces": list(token.namespaces)}
        await self.state.store.token_create(token.id, token.name, token.stored(), self.actor(), detail)
        self.send({**token.to_json(), "token": secret}, 201)


class TokenHandler(AdminHandler):
    query = {"DELETE": frozenset()}

    async def delete(self, token_id: str) -> None:
        await self._call(self._delete, token_id)

    async def _delete(self, token_id: str) -> None:
        if not tokens.ID_RE.fullmatch(token_id):
            raise HTTPFail(404, "no_token", "no such token")
        raw = (await self.state.store.tokens_all()).get(token_id)
        token = tokens.Token.load(token_id, raw) if raw is not None else None
        if token is None or not await self.state.store.token_delete(token_id, token.name, self.actor()):
            raise HTTPFail(404, "no_token", "no such token")
        self.send({"id": token_id, "name": token.name, "revoked": True})


# /healthz tells the store's state as of at most HEALTH_FRESH_S ago: a store call answered
# within it counts, otherwise a ping bounded by HEALTH_PING_S is made. Together at most
# ~100 ms between the store stopping to answer and /healthz saying so.
