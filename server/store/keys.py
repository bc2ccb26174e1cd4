"""Redis key layout: every name the store uses, built in one place so it can be audited.

With ``P`` the deployment prefix (``scriptgate`` by default):

=================================  ======  ==================================================
key                                type    what
=================================  ======  ==================================================
``P:{s}:gen``                      string  generation counter, +1 on every script change
``P:{s}:commands``                 set     commands that have at least one version
``P:{s}:meta:<command>``           hash    latest, created_at, updated_at (touched by every
                                           change to the command: the WATCH target)
``P:{s}:active``                   hash    command -> live version (the live pointer)
``P:{s}:v:<command>:<n>``          hash    immutable version n: source, sha256, size,
                                           created_at, author
``P:{s}:audit``                    stream  audit log, capped (XADD MAXLEN ~)
``P:{s}:restored``                 hash    at, commands: the last write-back of a lost
                                           registry (scripts_table.py)
``P:{s}:changes``                  pubsub  channel; the new generation after each change
``P:rec:<command>``                stream  recorded callbacks, capped by length and age
``P:{s}:rec_commands``             set     commands that have recordings
``P:log:<command>``                stream  per-callback logs, capped by length, age, bytes
``P:{s}:log_commands``             set     commands that have per-callback logs
``P:logs:live``                    pubsub  channel; every per-callback log record (live tail)
``P:{s}:tokens``                   hash    token id -> JSON (name, sha256 of the secret,
                                           scopes, commands, namespaces, created_at)
``P:{s}:token_names``              hash    token name -> id (names are unique)
``P:kv:<namespace>:<key>``         any     script KV data
=================================  ======  ==================================================

Why it is safe and cluster friendly:

- Everything of the script registry and the audit log shares the hash tag ``{s}``, so one
  MULTI/EXEC can update a version, the live pointer, the generation and the audit log
  atomically on a Redis Cluster too (they live in one slot).
- The prefix matches ``[A-Za-z0-9_.-]{1,64}`` (no ``:``), so two deployments with
  different prefixes never share a key.
- A namespace matches ``[A-Za-z0-9_-]{1,64}`` (no ``:``), so in ``P:kv:<ns>:<key>`` the
  first ``:`` after ``P:kv:`` always ends the namespace: ``(ns, key) -> name`` is
  injective, whatever the script key contains (``:``, ``{``, ``*``, unicode...). Every
  script key starts with ``P:kv:``, which no registry (``P:{s}:``) or recording
  (``P:rec:``) key does. A ``{...}`` inside a script key only chooses the key's cluster
  slot; every KV operation touches one key, so that is harmless.
- Command names match ``[A-Za-z0-9_.-]{1,128}`` (OpenIM callback names are plain words).
"""

from __future__ import annotations

import re

from server.store.base import StoreError

# The one definition of each name rule. Anchored with \A...\Z (not ^...$, whose $ also
# matches before a trailing newline), so ``.match``, ``.fullmatch`` and the is_* helpers agree.
PREFIX_RULE = "[A-Za-z0-9_.-]{1,64}"
NAMESPACE_RULE = "[A-Za-z0-9_-]{1,64}"
COMMAND_RULE = "[A-Za-z0-9_.-]{1,128}"
PREFIX_RE = re.compile(rf"\A{PREFIX_RULE}\Z")
NAMESPACE_RE = re.compile(rf"\A{NAMESPACE_RULE}\Z")
COMMAND_RE = re.compile(rf"\A{COMMAND_RULE}\Z")

# Characters that SCAN MATCH treats as glob syntax; escaped so a listing prefix is literal.
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def is_prefix(value: object) -> bool:
    return type(value) is str and PREFIX_RE.match(value) is not None


def is_namespace(value: object) -> bool:
    return type(value) is str and NAMESPACE_RE.match(value) is not None


def is_command(value: object) -> bool:
    return type(value) is str and COMMAND_RE.match(value) is not None


def check_prefix(prefix: str) -> str:
    if not is_prefix(prefix):
        raise ValueError(f"store prefix must match {PREFIX_RULE}")
    return prefix


def check_namespace(namespace: str) -> str:
    if not is_namespace(namespace):
        raise StoreError("invalid_namespace", f"namespace must match {NAMESPACE_RULE}", 400)
    return namespace


def check_command(command: str) -> str:
    if not is_command(command):
        raise StoreError("invalid_command", f"command must match {COMMAND_RULE}", 400)
    return command


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


class Keys:
    """Key names for one deployment prefix."""

    def __init__(self, prefix: str) -> None:
        p = check_prefix(prefix)
        self.prefix = p
        reg = f"{p}:{{s}}:"
        self.gen = reg + "gen"
        self.commands = reg + "commands"
        self.active = reg + "active"
        self.audit = reg + "audit"
        self.changes = reg + "changes"
        self.rec_commands = reg + "rec_commands"
        self.restored = reg + "restored"
        self._meta = reg + "meta:"
        self._version = reg + "v:"
        self._rec = f"{p}:rec:"
        self._log = f"{p}:log:"
        self.log_commands = reg + "log_commands"
        self.logs_live = f"{p}:logs:live"
        self.tokens = reg + "tokens"
        self.token_names = reg + "token_names"
        self.kv_root = f"{p}:kv:"  # also the widest CLIENT TRACKING prefix (tracking.py coarsens to it)

    def meta(self, command: str) -> str:
        return self._meta + command

    def version(self, command: str, n: int) -> str:
        return f"{self._version}{command}:{n}"

    def recordings(self, command: str) -> str:
        return self._rec + command

    def logs(self, command: str) -> str:
        return self._log + command

    def kv_ns_root(self, namespace: str) -> str:
        return f"{self.kv_root}{check_namespace(namespace)}:"

    def kv(self, namespace: str, key: str) -> str:
        # The script key was checked by sandbox.kvops.check_key (no control characters,
        # bounded length, valid unicode); the namespace is checked here.
        return self.kv_ns_root(namespace) + key
