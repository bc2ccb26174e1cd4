"""Scoped admin tokens.

Scopes: ``read`` (every GET), ``deploy`` (upload, activate, delete and test scripts;
optionally only for listed ``commands``), ``kv-write`` (change KV keys; optionally only in
listed ``namespaces``) and ``admin`` (everything, tokens included). The configured
``SCRIPTGATE_ADMIN_TOKEN`` / ``admin_token`` is an admin token named ``admin``.

A token is ``sg_`` + 32 random bytes (URL-safe base64); only its SHA-256 is stored
(``P:{s}:tokens``), so a copy of the store reveals no usable token. A presented token is
hashed and compared with every stored hash in constant time (``hmac.compare_digest``,
without stopping at a match), so timing reveals neither which token matched nor how much.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.isotime import iso_utc
from server.store.keys import is_namespace

READ, DEPLOY, KV_WRITE, ADMIN = "read", "deploy", "kv-write", "admin"
SCOPES = (READ, DEPLOY, KV_WRITE, ADMIN)
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ID_RE = re.compile(r"[0-9a-f]{16}")
CONFIGURED = "admin"  # the name of the configured admin token; no stored token may take it
MAX_TOKENS = 1000


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    scopes: tuple[str, ...]
    commands: tuple[str, ...] = ()  # deploy only for these (empty: every command)
    namespaces: tuple[str, ...] = ()  # kv-write only in these (empty: every namespace)
    created_at: float = 0.0
    sha256: str = field(default="", repr=False)

    def allows(self, scope: str, command: str | None = None, namespace: str | None = None) -> bool:
        """May this token do what needs ``scope`` (on ``command`` / in ``namespace``)?"""
        if ADMIN in self.scopes:
            return True
        if scope not in self.scopes:
            return False
        if scope == DEPLOY and self.commands and command is not None:
            return command in self.commands
        if scope == KV_WRITE and self.namespaces and namespace is not None:
            return namespace in self.namespaces
        return True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "commands": list(self.commands),
                "namespaces": list(self.namespaces), "created_at": iso_utc(self.created_at)}

    def stored(self) -> bytes:
        return orjson.dumps({"name": self.name, "sha256": self.sha256, "scopes": self.scopes,
                             "commands": self.commands, "namespaces": self.namespaces,
                             "created_at": self.created_at})

    @classmethod
    def load(cls, token_id: str, raw: str | bytes) -> Token | None:
        try:
            data = orjson.loads(raw)
            return cls(token_id, str(data["name"]), tuple(data["scopes"]), tuple(data.get("commands") or ()),
                       tuple(data.get("namespaces") or ()), float(data.get("created_at") or 0),
                       str(data["sha256"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


CONFIGURED_TOKEN = Token("configured", CONFIGURED, (ADMIN,))


class TokenRequestError(ValueError):
    pass


def new_token(body: Any, commands: Any) -> tuple[Token, str]:
    """A token from a ``POST /admin/tokens`` body, and its secret (shown once)."""
    if not isinstance(body, dict):
        raise TokenRequestError('body must be {"name": str, "scopes": [...], "commands"?: [...], "namespaces"?: [...]}')
    unknown = set(body) - {"name", "scopes", "commands", "namespaces"}
    if unknown:
        raise TokenRequestError(f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    name = body.get("name")
    if type(name) is not str or not NAME_RE.fullmatch(name):
        raise TokenRequestError("name must match [A-Za-z0-9_.-]{1,64}")
    if name == CONFIGURED:
        raise TokenRequestError(f"the name {CONFIGURED!r} is the configured admin token's")
    scopes = body.get("scopes")
    if type(scopes) is not list or not scopes or not all(type(s) is str and s in SCOPES for s in scopes):
        raise TokenRequestError(f"scopes must be a non-empty list of {', '.join(SCOPES)}")
    limits: dict[str, tuple[str, ...]] = {}
    for key, scope, valid, what in (("commands", DEPLOY, lambda c: c in commands, "a callbackCommand"),
                                    ("namespaces", KV_WRITE, is_namespace, "a namespace")):
        value = body.get(key) or []
        if type(value) is not list or not all(type(v) is str for v in value) or len(value) > 1000:
            raise TokenRequestError(f"{key} must be a list of strings")
        bad = [v for v in value if not valid(v)]
        if bad:
            raise TokenRequestError(f"{key}: {bad[0][:80]!r} is not {what}")
        if value and scope not in scopes:
            raise TokenRequestError(f"{key} limits the {scope!r} scope, which the token does not have")
        limits[key] = tuple(dict.fromkeys(value))
    secret = "sg_" + secrets.token_urlsafe(32)
    token = Token(secrets.token_hex(8), name, tuple(dict.fromkeys(scopes)), limits["commands"],
                  limits["namespaces"], time.time(), digest(secret))
    return token, secret


def match(secret: str, configured: str, stored: dict[str, Any]) -> Token | None:
    """The token ``secret`` is, or None. Every candidate is compared (constant time each)."""
    given = digest(secret).encode()
    found = None
    if configured and hmac.compare_digest(given, digest(configured).encode()):
        found = CONFIGURED_TOKEN
    for token_id, raw in stored.items():
        token = Token.load(token_id, raw)
        if token is not None and hmac.compare_digest(given, token.sha256.encode()) and found is None:
            found = token
    return found
