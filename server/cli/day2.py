"""Day-2 commands against a running server: ``scriptgate scripts``, ``kv``, ``tokens``,
``tail`` and ``completion``. Human tables by default, ``--json`` for machines; exit codes in
``server.cli.common`` (3: the server cannot be reached or the token is refused)."""

from __future__ import annotations

import difflib
import http.client
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import click
import orjson

from server.cli.admin_client import AdminClient, AdminError
from server.cli.common import (
    EXIT_CHANGED,
    EXIT_OK,
    Command,
    Group,
    client_from,
    connection_options,
    day2,
    fail,
    json_option,
    print_json,
    print_table,
    raw,
)

KV_PAGE = 1000
KV_TYPES = ("string", "set", "hash", "list")
TOKEN_SCOPES = ("read", "deploy", "kv-write", "admin")
STREAM_PATH = "/admin/logs/stream"


def _script_path(command: str, *rest: str) -> str:
    return "/".join(["/admin/scripts", quote(command, safe=""), *rest])


def _kv_path(key: str, *rest: str) -> str:
    # One key is one path segment, "/" included (the server decodes it once).
    return "/".join(["/admin/kv", quote(key, safe=":@"), *rest])


# --- scripts -----------------------------------------------------------------------------------

@click.group("scripts", cls=Group, short_help="list, show, diff, activate and roll back scripts on a server")
def scripts() -> None:
    """The scripts of a running server and their versions (GET/POST/DELETE /admin/scripts/...)."""


@scripts.command("ls")
@connection_options
@json_option
@day2
def scripts_ls(as_json: bool, **conn: Any) -> int:
    """Every command that has a script: live version, latest version, last change."""
    body = client_from(conn).request("GET", "/admin/scripts")
    if as_json:
        print_json(body)
        return EXIT_OK
    rows = [(s["command"], _v(s.get("active_version")) or "-", _v(s.get("latest_version")), len(s.get("versions") or []),
             s.get("updated_at")) for s in body.get("scripts") or []]
    print_table(("command", "live", "latest", "versions", "updated"), rows)
    return EXIT_OK


def _v(n: Any) -> str:
    return f"v{n}" if n is not None else ""


@scripts.command("show")
@click.argument("command")
@click.option("--version", "version", type=click.IntRange(min=1), metavar="N", help="a stored version (default: the live one)")
@connection_options
@json_option
@day2
def scripts_show(command: str, version: int | None, as_json: bool, **conn: Any) -> int:
    """Print the source of COMMAND's live script (or of version N) on stdout; what it is on stderr."""
    client = client_from(conn)
    path = _script_path(command, "versions", str(version)) if version else _script_path(command)
    body = client.request("GET", path)
    if as_json:
        print_json(body)
        return EXIT_OK
    state = "live" if body.get("active") else "not live"
    click.echo(f"# {command} v{body.get('version')} ({state}, sha256 {str(body.get('sha256'))[:12]}, "
               f"{body.get('created_at')}, by {body.get('author')})", err=True)
    sys.stdout.write(body.get("source") or "")
    sys.stdout.flush()
    return EXIT_OK


@scripts.command("versions")
@click.argument("command")
@connection_options
@json_option
@day2
def scripts_versions(command: str, as_json: bool, **conn: Any) -> int:
    """Every stored version of COMMAND, the live one marked."""
    body = client_from(conn).request("GET", _script_path(command, "versions"))
    if as_json:
        print_json(body)
        return EXIT_OK
    rows = [(_v(v["version"]), "live" if v.get("active") else "", str(v.get("sha256"))[:12], v.get("size"),
             v.get("created_at"), v.get("author")) for v in body.get("versions") or []]
    print_table(("version", "", "sha256", "bytes", "created", "author"), rows)
    return EXIT_OK


def _version_arg(client: AdminClient, command: str, spec: str) -> dict[str, Any]:
    """A stored version by number ("3" or "v3") or the live one ("live")."""
    if spec == "live":
        return client.request("GET", _script_path(command))
    number = spec.removeprefix("v")
    if not number.isdigit() or int(number) < 1:
        fail(f"{spec!r} is not a version: give a number (3 or v3) or live")
    return client.request("GET", _script_path(command, "versions", number))


@scripts.command("diff", epilog=raw("Exit status: 0 the two versions have the same source, 1 they differ,\n"
                                    "2 a version does not exist, 3 the server cannot be used."))
@click.argument("command")
@click.argument("a")
@click.argument("b")
@connection_options
@json_option
@day2
def scripts_diff(command: str, a: str, b: str, as_json: bool, **conn: Any) -> int:
    """Unified diff between two versions of COMMAND (numbers, or live)."""
    client = client_from(conn)
    old, new = _version_arg(client, command, a), _version_arg(client, command, b)
    lines = list(difflib.unified_diff(
        (old.get("source") or "").splitlines(keepends=True), (new.get("source") or "").splitlines(keepends=True),
        fromfile=f"{command} v{old.get('version')}", tofile=f"{command} v{new.get('version')}"))
    same = old.get("sha256") == new.get("sha256")
    if as_json:
        print_json({"command": command, "a": old.get("version"), "b": new.get("version"), "identical": same,
                    "diff": "".join(lines)})
    elif same:
        click.echo(f"{command}: v{old.get('version')} and v{new.get('version')} have the same source")
    else:
        for line in lines:
            sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return EXIT_OK if same else EXIT_CHANGED


def _activate(client: AdminClient, command: str, version: int, as_json: bool) -> int:
    body = client.request("POST", _script_path(command, "activate"), json={"version": version})
    if as_json:
        print_json(body)
    else:
        before = body.get("previous_version")
        was = f"was v{before}" if before else "no live version before"
        click.echo(f"{command}: v{body.get('active_version')} is live ({was})")
    return EXIT_OK


@scripts.command("activate")
@click.argument("command")
@click.argument("version", type=click.IntRange(min=1), metavar="N")
@connection_options
@json_option
@day2
def scripts_activate(command: str, version: int, as_json: bool, **conn: Any) -> int:
    """Make version N of COMMAND live (promote a draft, or go back to any version)."""
    return _activate(client_from(conn), command, version, as_json)


@scripts.command("rollback")
@click.argument("command")
@click.option("--to", "to", type=click.IntRange(min=1), metavar="N", help="the version to go back to")
@connection_options
@json_option
@day2
def scripts_rollback(command: str, to: int | None, as_json: bool, **conn: Any) -> int:
    """Make the version before the live one live again (the live number minus one, or --to N)."""
    from server.service.scripts import NothingToRollBack, rollback_target

    client = client_from(conn)
    body = client.request("GET", _script_path(command, "versions"))
    try:
        to = rollback_target(command, body.get("active_version"), to)
    except NothingToRollBack as exc:
        fail(exc.message)
    return _activate(client, command, to, as_json)


@scripts.command("delete")
@click.argument("command")
@connection_options
@json_option
@day2
def scripts_delete(command: str, as_json: bool, **conn: Any) -> int:
    """Stop running COMMAND's script (its versions are kept: `scripts activate` brings one back)."""
    body = client_from(conn).request("DELETE", _script_path(command))
    if as_json:
        print_json(body)
    else:
        click.echo(f"{command}: no live script now (was v{body.get('previous_version')}; versions kept)")
    return EXIT_OK


# --- kv ----------------------------------------------------------------------------------------

def namespace_option(f: Any) -> Any:
    return click.option("--namespace", "-n", default="default", show_default=True, help="KV namespace")(f)


@click.group("kv", cls=Group, short_help="read and change the KV data scripts see")
def kv() -> None:
    """The KV data scripts read through `kv` (GET/PUT/DELETE /admin/kv/...)."""


@kv.command("get")
@click.argument("key")
@namespace_option
@connection_options
@json_option
@day2
def kv_get(key: str, namespace: str, as_json: bool, **conn: Any) -> int:
    """Print KEY's value: a string as is, a set or list one item a line, a hash as a table."""
    body = client_from(conn).request("GET", _kv_path(key), query={"namespace": namespace})
    if as_json:
        print_json(body)
        return EXIT_OK
    value = body.get("value")
    if body.get("type") == "hash" and isinstance(value, dict):
        print_table(("field", "value"), sorted(value.items()))
    elif isinstance(value, list):
        for item in value:
            click.echo(item)
    else:
        click.echo(value)
    if body.get("truncated"):
        click.echo(f"scriptgate: note: {key} has {body.get('size')} items; only the first {len(value or [])} "
                   "are shown", err=True)
    return EXIT_OK


def _parse_value(kind: str | None, values: tuple[str, ...], as_json_value: bool) -> tuple[str, Any]:
    if as_json_value:
        if len(values) != 1:
            fail("--json-value takes exactly one VALUE (a JSON document)")
        try:
            value = orjson.loads(values[0])
        except orjson.JSONDecodeError as exc:
            fail(f"VALUE is not valid JSON: {exc}")
        kind = kind or {str: "string", dict: "hash", list: "list"}.get(type(value))
        if kind is None:
            fail("a JSON VALUE must be a string, a list or an object")
        return kind, value
    kind = kind or "string"
    if kind == "string":
        if len(values) != 1:
            fail("a string takes exactly one VALUE (--type set|list for several)")
        return kind, values[0]
    if kind == "hash":
        pairs = [v.partition("=") for v in values]
        if not all(sep for _, sep, _ in pairs):
            fail("hash values are FIELD=VALUE pairs")
        return kind, {f: v for f, _, v in pairs}
    return kind, list(values)


@kv.command("set")
@click.argument("key")
@click.argument("values", nargs=-1, required=True, metavar="VALUE...")
@click.option("--type", "kind", type=click.Choice(KV_TYPES), help="string (default), set, list, or hash (FIELD=VALUE ...)")
@click.option("--ttl", type=click.IntRange(min=1), metavar="S", help="expire after S seconds")
@click.option("--json-value", is_flag=True, help="VALUE is one JSON document (string, list or object)")
@namespace_option
@connection_options
@json_option
@day2
def kv_set(key: str, values: tuple[str, ...], kind: str | None, ttl: int | None, json_value: bool, namespace: str,
           as_json: bool, **conn: Any) -> int:
    """Write KEY (replacing what it held)."""
    kind, value = _parse_value(kind, values, json_value)
    body = client_from(conn).request("PUT", _kv_path(key), query={"namespace": namespace},
                                     json={"type": kind, "value": value, "ttl": ttl})
    if as_json:
        print_json(body)
    else:
        expires = f", expires in {ttl} s" if ttl else ""
        click.echo(f"{key}: set ({kind}{expires}) in namespace {namespace}")
    return EXIT_OK


@kv.command("del")
@click.argument("key")
@namespace_option
@connection_options
@json_option
@day2
def kv_del(key: str, namespace: str, as_json: bool, **conn: Any) -> int:
    """Delete KEY (exit 2 if it does not exist)."""
    body = client_from(conn).request("DELETE", _kv_path(key), query={"namespace": namespace})
    if as_json:
        print_json(body)
    else:
        click.echo(f"{key}: deleted from namespace {namespace}")
    return EXIT_OK


def _scan(client: AdminClient, namespace: str, prefix: str, limit: int | None) -> Iterator[dict[str, Any]]:
    cursor, seen, count = "0", set(), 0
    while True:
        page = client.request("GET", "/admin/kv",
                              query={"namespace": namespace, "prefix": prefix, "limit": KV_PAGE, "cursor": cursor})
        for entry in page.get("keys") or []:
            yield entry
            count += 1
            if limit is not None and count >= limit:
                return
        cursor = str(page.get("cursor") or "0")
        if cursor == "0" or cursor in seen:  # a cursor seen twice would loop forever
            return
        seen.add(cursor)


@kv.command("ls")
@click.option("--prefix", default="", help="only keys starting with this")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="at most N keys")
@namespace_option
@connection_options
@json_option
@day2
def kv_ls(prefix: str, limit: int | None, namespace: str, as_json: bool, **conn: Any) -> int:
    """List keys (all pages), sorted."""
    keys = sorted(_scan(client_from(conn), namespace, prefix, limit), key=lambda e: e["key"])
    if as_json:
        print_json({"namespace": namespace, "keys": keys})
    else:
        print_table(("key", "type", "ttl"), [(k["key"], k.get("type"), k.get("ttl") or "") for k in keys])
    return EXIT_OK


@kv.group("members")
def kv_members() -> None:
    """Add or remove members of a set (a blocklist) without rewriting it."""


def _members(op: str, key: str, members: tuple[str, ...], namespace: str, as_json: bool, conn: dict[str, Any]) -> int:
    body = client_from(conn).request("POST", _kv_path(key, "members"), query={"namespace": namespace},
                                     json={op: list(members)})
    if as_json:
        print_json(body)
    else:
        n = body.get("added" if op == "add" else "removed")
        click.echo(f"{key}: {n} {'added' if op == 'add' else 'removed'}, {body.get('size')} member(s) now")
    return EXIT_OK


@kv_members.command("add")
@click.argument("key")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@namespace_option
@connection_options
@json_option
@day2
def kv_members_add(key: str, members: tuple[str, ...], namespace: str, as_json: bool, **conn: Any) -> int:
    """Add MEMBERs to the set KEY (created if missing)."""
    return _members("add", key, members, namespace, as_json, conn)


@kv_members.command("remove")
@click.argument("key")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@namespace_option
@connection_options
@json_option
@day2
def kv_members_remove(key: str, members: tuple[str, ...], namespace: str, as_json: bool, **conn: Any) -> int:
    """Remove MEMBERs from the set KEY."""
    return _members("remove", key, members, namespace, as_json, conn)


# --- tokens ------------------------------------------------------------------------------------

@click.group("tokens", cls=Group, short_help="create, list and revoke scoped admin tokens")
def tokens() -> None:
    """Scoped admin tokens (POST/GET/DELETE /admin/tokens). Scopes: read, deploy (optionally
    limited to --command), kv-write (optionally limited to --kv-namespace), admin."""


@tokens.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(TOKEN_SCOPES),
              help="read, deploy, kv-write or admin (repeat for several)")
@click.option("--command", "commands", multiple=True, metavar="CMD", help="deploy only these commands (repeatable)")
@click.option("--kv-namespace", "namespaces", multiple=True, metavar="NS",
              help="kv-write only these namespaces (repeatable)")
@connection_options
@json_option
@day2
def tokens_create(name: str, scopes: tuple[str, ...], commands: tuple[str, ...], namespaces: tuple[str, ...],
                  as_json: bool, **conn: Any) -> int:
    """Create a token; its secret is printed once, on stdout."""
    doc: dict[str, Any] = {"name": name, "scopes": list(scopes)}
    if commands:
        doc["commands"] = list(commands)
    if namespaces:
        doc["namespaces"] = list(namespaces)
    body = client_from(conn).request("POST", "/admin/tokens", json=doc)
    if as_json:
        print_json(body)
        return EXIT_OK
    click.echo(f"token {body.get('id')} ({body.get('name')}: {', '.join(body.get('scopes') or [])}) created; "
               "its secret is shown only now:", err=True)
    click.echo(body.get("token"))
    return EXIT_OK


@tokens.command("ls")
@connection_options
@json_option
@day2
def tokens_ls(as_json: bool, **conn: Any) -> int:
    """The tokens (never their secrets)."""
    body = client_from(conn).request("GET", "/admin/tokens")
    if as_json:
        print_json(body)
        return EXIT_OK
    rows = [(t.get("id"), t.get("name"), ",".join(t.get("scopes") or []), ",".join(t.get("commands") or []) or "*",
             ",".join(t.get("namespaces") or []) or "*", t.get("created_at")) for t in body.get("tokens") or []]
    print_table(("id", "name", "scopes", "commands", "namespaces", "created"), rows)
    return EXIT_OK


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@connection_options
@json_option
@day2
def tokens_revoke(token_id: str, as_json: bool, **conn: Any) -> int:
    """Revoke token ID at once."""
    body = client_from(conn).request("DELETE", f"/admin/tokens/{quote(token_id, safe='')}")
    if as_json:
        print_json(body if body is not None else {"id": token_id, "revoked": True})
    else:
        click.echo(f"token {token_id} revoked")
    return EXIT_OK


# --- tail --------------------------------------------------------------------------------------

def sse_events(lines: Iterator[bytes]) -> Iterator[str]:
    """The data of each server-sent event (``data:`` lines joined by newlines, per the
    EventSource rules); comments (heartbeats) and other fields are skipped."""
    data: list[str] = []
    for raw_line in lines:
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def format_record(rec: dict[str, Any]) -> list[str]:
    """One callback as `wrangler tail` shows one request: a head line, then its logs and error."""
    version = f"v{rec['version']}" if rec.get("version") is not None else "-"
    elapsed = rec.get("elapsed_ms")
    took = f"{elapsed:.1f} ms" if isinstance(elapsed, (int, float)) else ""
    head = "  ".join(str(p) for p in (rec.get("ts", ""), rec.get("command", ""), version,
                                       rec.get("operationID") or "-", rec.get("verdict", ""), took) if p != "")
    out = [head]
    out += [f"  | {line}" for line in rec.get("logs") or []]
    if rec.get("error") or rec.get("error_kind"):
        out.append(f"  ! {rec.get('error_kind') or 'error'}: {rec.get('error') or ''}".rstrip())
    return out


def open_stream(client: AdminClient, query: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
    """GET the log stream; the connection waits for events without a read timeout (an idle
    server is not a dead one), but connecting is bounded by --timeout."""
    parts = urllib.parse.urlsplit(client.server)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=client.timeout)
    path = parts.path.rstrip("/") + STREAM_PATH
    q = {k: v for k, v in query.items() if v is not None}
    if q:
        path += "?" + urllib.parse.urlencode(q)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(None)
        conn.request("GET", path, headers={"Authorization": f"Bearer {client.token}", "Accept": "text/event-stream",
                                           "X-ScriptGate-Actor": client.actor})
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise AdminError(f"cannot reach {client.server}: {getattr(exc, 'strerror', None) or exc}",
                         unreachable=True) from None
    if resp.status != 200:
        body = resp.read(4096)
        conn.close()
        message = ""
        try:
            doc = orjson.loads(body)
            message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
        except orjson.JSONDecodeError:
            pass
        if resp.status == 404 and not message:
            message = "this server has no log stream (a ScriptGate before per-callback logs?)"
        if resp.status == 401:
            message = "unauthorized: wrong or missing admin token"
        raise AdminError(f"GET {STREAM_PATH}: HTTP {resp.status} {message or resp.reason}".rstrip(), resp.status)
    return conn, resp


@click.command("tail", cls=Command, short_help="follow callbacks live: verdicts, logs, errors", epilog=raw(
    "Each callback: TS  COMMAND  VERSION  OPERATION-ID  VERDICT  ELAPSED, then its log()\n"
    "lines (|) and its error (!). Stops at Ctrl-C, after --max events, or when the server\n"
    "ends the stream (exit 3 then: the server went away)."))
@click.argument("command", required=False)
@click.option("--errors", is_flag=True, help="only callbacks that ended in a script error")
@click.option("--operation-id", metavar="ID", help="only callbacks with this operationID")
@click.option("--max", "max_events", type=click.IntRange(min=1), metavar="N", help="stop after N callbacks")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="one JSON record per line (NDJSON), as the server sends it")
@day2
def tail(command: str | None, errors: bool, operation_id: str | None, max_events: int | None, as_json: bool,
         **conn: Any) -> int:
    """Callbacks live, as they are answered: verdicts, logs and errors (GET /admin/logs/stream)."""
    client = client_from(conn)
    query = {"command": command, "operationID": operation_id, "errors": "1" if errors else None}
    connection, resp = open_stream(client, query)
    seen = 0
    try:
        for data in sse_events(iter(resp.readline, b"")):
            try:
                rec = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # not a record (a future event type): skip, keep tailing
            if not isinstance(rec, dict):
                continue
            if as_json:
                sys.stdout.write(orjson.dumps(rec).decode() + "\n")
            else:
                sys.stdout.write("".join(line + "\n" for line in format_record(rec)))
            sys.stdout.flush()
            seen += 1
            if max_events is not None and seen >= max_events:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except (OSError, http.client.HTTPException) as exc:
        fail(f"the log stream broke: {exc}", 3)
    finally:
        connection.close()
    fail("the server ended the log stream", 3)


# --- completion --------------------------------------------------------------------------------

@click.command("completion", cls=Command, short_help="print a shell completion script", epilog=raw(
    "Install, for example:\n"
    "  bash: scriptgate completion bash > ~/.local/share/bash-completion/completions/scriptgate\n"
    "  zsh:  scriptgate completion zsh > \"${fpath[1]}/_scriptgate\"\n"
    "  fish: scriptgate completion fish > ~/.config/fish/completions/scriptgate.fish"))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> int:
    """Print the shell completion script for SHELL."""
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    cls = get_completion_class(shell)
    assert cls is not None
    sys.stdout.write(cls(root, {}, "scriptgate", "_SCRIPTGATE_COMPLETE").source())
    return EXIT_OK


def register(group: click.Group) -> None:
    for command in (scripts, kv, tokens, tail, completion):
        group.add_command(command)
