"""Server configuration: defaults, the TOML config file, and command-line overrides.

Per-command settings (failure policy, deadline, budgets, KV namespace, recording) come
from ``[defaults]`` overlaid by ``[commands.<callbackCommand>]``; they are resolved once
at start into ``CommandSettings`` so the hot path only does a dict lookup.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sandbox.api import ERRCODE_MAX, ERRCODE_MIN, Budgets
from server.store.keys import NAMESPACE_RULE, PREFIX_RULE, is_namespace, is_prefix

DEFAULT_PORT = 10006
INVITE_NARROWING = ("reject", "refused_members")
# Each pending early-acknowledged run holds its request body and a task: bounded in memory.
MAX_AFTER_ACK_PENDING = 100_000
OPENIM_LINES = ("main", "v3.8")  # the OpenIM lines ScriptGate knows; server/catalog.py uses these


EVENT_LOOPS = ("uvloop", "asyncio")

class ConfigError(ValueError):
    """A configuration value is wrong; the message names it."""


@dataclass(frozen=True)
class RecordSettings:
    enabled: bool = False
    sample: float = 1.0  # fraction of callbacks recorded, 0..1
    max_records: int = 100_000  # per command (stream MAXLEN, approximate)
    max_age_s: int = 7 * 24 * 3600  # records older than this are trimmed
    redact: tuple[str, ...] = ()  # request/reply fields replaced by "[redacted]"


@dataclass(frozen=True)
class CommandSettings:
    failure_policy: str = "open"  # open: continue unchanged; closed: reject
    reject_errcode: int = 5000
    reject_errmsg: str = "request refused by the callback server"
    reject_errdlt: str = ""
    # deny() with an errCode OpenIM cannot use (outside 100..2^31-1, or not an integer) is
    # still a deny, with this code (server/service/callbacks.py).
    deny_errcode_fallback: int = 5000
    # beforeInviteJoinGroup: OpenIM ignores invitedUserIDs in the reply, so a script that
    # narrows the list is answered with a rejection naming the removed users ("reject",
    # errCode invite_narrowing_errcode) or with refusedMembersAccount ("refused_members",
    # for OpenIM versions that apply it).
    invite_narrowing: str = "reject"
    invite_narrowing_errcode: int = 5001
    deadline_ms: int = 2000  # whole callback, queueing included; below OpenIM's timeout
    namespace: str = "default"  # KV namespace the script sees
    budgets: Budgets = field(default_factory=Budgets)
    record: RecordSettings = field(default_factory=RecordSettings)


@dataclass(frozen=True)
class LogSettings:
    """``[logs]``: per-callback logs (server/calllogs.py), one Redis stream per command."""

    enabled: bool = True
    max_records: int = 10_000  # per command (stream MAXLEN, approximate)
    max_age_s: int = 3 * 24 * 3600  # records older than this are trimmed
    max_bytes: int = 16 * 1024 * 1024  # per command, approximate (count cap from the mean record size)
    max_record_bytes: int = 16_384  # one record's JSON; longer log lines are cut to fit
    keepalive_s: float = 15.0  # GET /admin/logs/stream sends a comment line this often when idle


LOG_FORMATS = ("text", "json")
_COMMAND_KEYS = {f.name for f in fields(CommandSettings)}
_RECORD_KEYS = {f.name for f in fields(RecordSettings)}


@dataclass
class Config:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    redis: str | None = None  # None: embedded in-process store
    prefix: str = "scriptgate"  # key prefix in Redis, one per deployment
    workers: int = 0  # HTTP processes sharing the port; 0 = one per core
    sandbox_workers: int = 4  # script worker processes per HTTP process
    # Poll this long before sleeping while a worker call is out (host and workers): waking
    # a halted vCPU costs more than the whole round trip (sandbox/host/spin.py). 0 = never.
    sandbox_spin_us: int = 25
    # The HTTP process's event loop: uvloop (libuv; about 15% more callbacks per second per
    # HTTP process, docs/performance.md) or asyncio (the standard library's, whose selector
    # can poll for sandbox_spin_us; with uvloop only the workers poll).
    event_loop: str = "uvloop"
    openim: str = "main"  # the OpenIM line that calls this server: main | v3.8 (catalog.OPENIM_LINES)
    store_label: str = ""  # how "ready on" names the store (not a file setting)
    scripts_dir: str | None = None
    record: bool = False  # --record: record every command
    path_prefix: str = ""  # secret path segment(s) callbacks must start with
    allow_cidrs: tuple[str, ...] = ()  # callback clients allowed; empty = any
    admin_allow_cidrs: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    max_script_bytes: int = 65_536
    # A request body not complete this long after its headers is answered (five fields,
    # error "body_timeout") and its connection closed (server/http/h1.py).
    body_timeout_s: float = 30.0
    admin_token: str | None = None
    metrics_public: bool = False  # /metrics without the admin token
    trust_proxy: bool = False  # take the client address from X-Forwarded-For / X-Real-Ip
    # Resident memory of one HTTP process above which it warns and drops its KV cache
    # (server/memory.py); soft: nothing is refused.
    memory_soft_limit_mb: int = 300
    # [penalty_box] strikes, window, base_s, max_s, clean_reset, refusal_delay_ms
    # (sandbox/host/fairness.py BoxSettings)
    penalty_box: dict[str, Any] = field(default_factory=dict)
    logs: LogSettings = field(default_factory=LogSettings)
    log_format: str = "text"  # text | json (server log lines; json carries operationID on callback lines)
    # On SIGTERM/SIGINT: stop accepting, then give in-flight callbacks up to this long
    # (each still within its own deadline) before recordings are flushed and we exit.
    drain_grace_s: float = 10.0
    # After-callbacks (OpenIM only logs their reply, docs/openim.md): answer with the plain
    # acknowledgement at once and run the script right after, with at most this many such
    # runs pending per HTTP process (server/service/after.py); when they are all taken, the
    # callback is answered the old way, after its script. 0 = never (every callback waits).
    # 64: well above what OpenIM's queues send at once (2 workers per webhook client), low
    # enough that a callback answered after its script waits behind few background runs.
    after_ack_max_pending: int = 64
    # An admin write answers once every HTTP process of this instance serves it, or after
    # this long (the reply then says "synced": false).
    sync_timeout_s: float = 2.0
    defaults: CommandSettings = field(default_factory=CommandSettings)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    record_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    source_file: str | None = None

    def settings_for(self, command: str) -> CommandSettings:
        return _resolve(self, command)

    def networks(self, admin: bool = False) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        cidrs = self.admin_allow_cidrs if admin else self.allow_cidrs
        return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _check_command_settings(where: str, s: CommandSettings) -> None:
    if s.failure_policy not in ("open", "closed"):
        raise ConfigError(f"{where}.failure_policy must be 'open' or 'closed'")
    for name in ("reject_errcode", "deny_errcode_fallback", "invite_narrowing_errcode"):
        value = getattr(s, name)
        if type(value) is not int or not ERRCODE_MIN <= value <= ERRCODE_MAX:
            raise ConfigError(f"{where}.{name} must be an integer in {ERRCODE_MIN}..{ERRCODE_MAX}")
    if s.invite_narrowing not in INVITE_NARROWING:
        raise ConfigError(f"{where}.invite_narrowing must be one of {', '.join(map(repr, INVITE_NARROWING))}")
    for name in ("reject_errmsg", "reject_errdlt"):
        if type(getattr(s, name)) is not str:
            raise ConfigError(f"{where}.{name} must be a string")
    if type(s.deadline_ms) is not int or not 50 <= s.deadline_ms <= 14_000:
        raise ConfigError(f"{where}.deadline_ms must be an integer in 50..14000 (OpenIM caps at 15 s)")
    if not is_namespace(s.namespace):
        raise ConfigError(f"{where}.namespace must match {NAMESPACE_RULE}")
    if s.budgets.wall_ms >= s.deadline_ms:
        raise ConfigError(f"{where}: budgets.wall_ms must be below deadline_ms")
    r = s.record
    if not 0.0 <= float(r.sample) <= 1.0:
        raise ConfigError(f"{where}.record.sample must be between 0 and 1")
    if type(r.max_records) is not int or r.max_records < 1:
        raise ConfigError(f"{where}.record.max_records must be a positive integer")


def _apply(where: str, base: CommandSettings, table: dict[str, Any]) -> CommandSettings:
    unknown = set(table) - _COMMAND_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
    changes: dict[str, Any] = {k: v for k, v in table.items() if k not in ("budgets", "record")}
    if "budgets" in table:
        try:
            changes["budgets"] = base.budgets.merged(table["budgets"])
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}.budgets: {exc}") from None
    if "record" in table:
        changes["record"] = _record(f"{where}.record", base.record, table["record"])
    return replace(base, **changes)


def _record(where: str, base: RecordSettings, table: Any) -> RecordSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _RECORD_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
    changes = dict(table)
    if "redact" in changes:
        redact = changes["redact"]
        if not isinstance(redact, list) or not all(isinstance(x, str) for x in redact):
            raise ConfigError(f"{where}.redact must be a list of field names")
        changes["redact"] = tuple(redact)
    return replace(base, **changes)


def _resolve(cfg: Config, command: str) -> CommandSettings:
    s = cfg.defaults
    if cfg.record:
        s = replace(s, record=replace(s.record, enabled=True))
    if command in cfg.overrides:
        s = _apply(f"commands.{command}", s, cfg.overrides[command])
    if command in cfg.record_overrides:
        s = replace(s, record=_record(f"record.commands.{command}", s.record, cfg.record_overrides[command]))
    return s


_TOP_KEYS = {
    "host", "port", "redis", "prefix", "workers", "sandbox_workers", "sandbox_spin_us", "event_loop", "scripts_dir", "record",
    "path_prefix", "allow_cidrs", "admin_allow_cidrs", "max_body_bytes", "max_script_bytes",
    "admin_token", "metrics_public", "trust_proxy", "defaults", "commands", "openim", "memory_soft_limit_mb",
    "penalty_box", "body_timeout_s", "logs", "log_format", "drain_grace_s", "sync_timeout_s",
    "after_ack_max_pending",
}


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None


def build(data: dict[str, Any], *, source_file: str | None = None, known_commands: set[str] | None = None) -> Config:
    """Build and validate a Config from a parsed TOML document."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}")
    cfg = Config(source_file=source_file)
    simple = {k: v for k, v in data.items() if k not in ("defaults", "commands", "record", "logs")}
    if "logs" in data:
        cfg.logs = _logs(data["logs"])
    for key, value in simple.items():
        if key in ("allow_cidrs", "admin_allow_cidrs"):
            if not isinstance(value, list):
                raise ConfigError(f"{key} must be a list of CIDR strings")
            value = tuple(value)
        setattr(cfg, key, value)
    record = data.get("record")
    if isinstance(record, bool):
        cfg.record = record
    elif isinstance(record, dict):
        per_command = record.get("commands", {})
        table = {k: v for k, v in record.items() if k != "commands"}
        cfg.defaults = replace(cfg.defaults, record=_record("record", cfg.defaults.record, table))
        if not isinstance(per_command, dict):
            raise ConfigError("record.commands must be a table")
        cfg.record_overrides = dict(per_command)
    elif record is not None:
        raise ConfigError("record must be true/false or a table")
    if "defaults" in data:
        cfg.defaults = _apply("defaults", cfg.defaults, data["defaults"])
    commands = data.get("commands", {})
    if not isinstance(commands, dict):
        raise ConfigError("commands must be a table of callbackCommand tables")
    cfg.overrides = dict(commands)
    validate(cfg, known_commands)
    return cfg


def validate(cfg: Config, known_commands: set[str] | None = None) -> None:
    """Raise ConfigError naming the first wrong value (checked in the order below)."""
    _check_sizes_and_times(cfg)
    _check_addresses(cfg)
    _check_commands(cfg, known_commands)


def _check_sizes_and_times(cfg: Config) -> None:
    if type(cfg.port) is not int or not 0 <= cfg.port <= 65535:
        raise ConfigError("port must be an integer in 0..65535")
    for key in ("workers", "sandbox_workers", "max_body_bytes", "max_script_bytes", "memory_soft_limit_mb"):
        value = getattr(cfg, key)
        if type(value) is not int or value < (0 if key == "workers" else 1):
            raise ConfigError(f"{key} must be a positive integer")
    _check_penalty_box(cfg.penalty_box)
    if type(cfg.body_timeout_s) not in (int, float) or not 0.1 <= cfg.body_timeout_s <= 3600:
        raise ConfigError("body_timeout_s must be a number of seconds in 0.1..3600")
    _check_logs(cfg.logs)
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(map(repr, LOG_FORMATS))}")
    for key in ("drain_grace_s", "sync_timeout_s"):
        value = getattr(cfg, key)
        if type(value) not in (int, float) or not 0 <= value <= 3600:
            raise ConfigError(f"{key} must be a number of seconds in 0..3600")
    if type(cfg.sandbox_spin_us) is not int or not 0 <= cfg.sandbox_spin_us <= 10_000:
        raise ConfigError("sandbox_spin_us must be an integer in 0..10000")
    if cfg.event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(map(repr, EVENT_LOOPS))}")
    if type(cfg.after_ack_max_pending) is not int or not 0 <= cfg.after_ack_max_pending <= MAX_AFTER_ACK_PENDING:
        raise ConfigError(f"after_ack_max_pending must be an integer in 0..{MAX_AFTER_ACK_PENDING} (0 = off)")


def _check_addresses(cfg: Config) -> None:
    """The OpenIM line, the store prefix, the callback path prefix and the allowed networks;
    normalises ``path_prefix`` to ``/name``."""
    if cfg.openim not in OPENIM_LINES:
        raise ConfigError(f"openim must be one of {', '.join(map(repr, OPENIM_LINES))} (the OpenIM line that calls this server)")
    if not is_prefix(cfg.prefix):
        raise ConfigError(f"prefix must match {PREFIX_RULE}")
    if cfg.path_prefix:
        cfg.path_prefix = "/" + cfg.path_prefix.strip("/")
        if "//" in cfg.path_prefix or len(cfg.path_prefix) < 2:
            raise ConfigError("path_prefix must be a non-empty path such as 'hook-7f3a9c'")
    for key in ("allow_cidrs", "admin_allow_cidrs"):
        for cidr in getattr(cfg, key):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"{key}: {cidr!r} is not a valid network (e.g. 10.0.0.0/8)") from None


def _check_commands(cfg: Config, known_commands: set[str] | None) -> None:
    _check_command_settings("defaults", cfg.defaults)
    for command in cfg.overrides:
        if known_commands is not None and command not in known_commands:
            raise ConfigError(f"commands.{command}: not an OpenIM callbackCommand")
        if not isinstance(cfg.overrides[command], dict):
            raise ConfigError(f"commands.{command} must be a table")
        _check_command_settings(f"commands.{command}", _resolve(cfg, command))
    for command in cfg.record_overrides:
        if known_commands is not None and command not in known_commands:
            raise ConfigError(f"record.commands.{command}: not an OpenIM callbackCommand")
        _check_command_settings(f"record.commands.{command}", _resolve(cfg, command))


def _logs(table: Any) -> LogSettings:
    if not isinstance(table, dict):
        raise ConfigError("logs must be a table")
    known = {f.name for f in fields(LogSettings)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"logs: unknown setting(s) {sorted(unknown)}")
    return replace(LogSettings(), **table)


def _check_logs(s: LogSettings) -> None:
    if type(s.enabled) is not bool:
        raise ConfigError("logs.enabled must be true or false")
    for name in ("max_records", "max_age_s", "max_bytes"):
        if type(getattr(s, name)) is not int or getattr(s, name) < 1:
            raise ConfigError(f"logs.{name} must be a positive integer")
    if type(s.max_record_bytes) is not int or not 1024 <= s.max_record_bytes <= s.max_bytes:
        raise ConfigError("logs.max_record_bytes must be an integer in 1024..logs.max_bytes")
    if type(s.keepalive_s) not in (int, float) or not 0.05 <= s.keepalive_s <= 300:
        raise ConfigError("logs.keepalive_s must be a number of seconds in 0.05..300")


def _check_penalty_box(table: Any) -> None:
    from sandbox.host.fairness import BoxSettings

    if not isinstance(table, dict):
        raise ConfigError("penalty_box must be a table")
    known = {f.name for f in fields(BoxSettings)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"penalty_box: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        if key == "refusal_delay_ms":
            if type(value) not in (int, float) or not 0 <= value <= 1000:
                raise ConfigError("penalty_box.refusal_delay_ms must be a number of milliseconds in 0..1000")
            continue
        if type(value) not in (int, float) or value <= 0 or (key in ("strikes", "window", "clean_reset")
                                                            and type(value) is not int):
            raise ConfigError(f"penalty_box.{key} must be a positive number")


def penalty_box_settings(cfg: Config) -> Any:
    from sandbox.host.fairness import BoxSettings

    return BoxSettings(**cfg.penalty_box)


def load(path: str | None, known_commands: set[str] | None = None) -> Config:
    if path is None:
        cfg = Config()
        validate(cfg, known_commands)
        return cfg
    return build(load_file(path), source_file=str(Path(path)), known_commands=known_commands)
