"""What every ``scriptgate`` command shares: the click classes, the server connection
options, the exit codes and the two output styles (human tables via rich, or ``--json``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import click
import orjson

from server.cli.admin_client import DEFAULT_SERVER, PROFILE_ENV, TOKEN_ENV, URL_ENV, AdminClient, AdminError, connect

# Exit codes. The offline commands and push/export/kv-snapshot keep their documented codes
# (2 also when the server cannot be reached); the day-2 commands use EXIT_ACCESS for that.
EXIT_OK = 0
EXIT_CHANGED = 1  # a diff was found, a check failed: the command worked, the answer is "no"
EXIT_ERROR = 2  # bad usage, or the server refused the request (not found, invalid...)
EXIT_ACCESS = 3  # the server could not be reached, or the token is missing or refused

F = TypeVar("F", bound=Callable[..., Any])


class Context(click.Context):
    # --help and --version end the program the way argparse did (SystemExit), so a caller of
    # ``server.cli.main.main`` can tell them from a command's return code.
    def exit(self, code: int = 0) -> NoReturn:
        self.close()
        raise SystemExit(code)


class Command(click.Command):
    context_class = Context


class Group(click.Group):
    context_class = Context
    command_class = Command
    group_class = type  # subgroups are Groups too


def raw(text: str) -> str:
    """Help text kept as written: click rewraps every paragraph not marked with \\b."""
    return "\n\n".join("\b\n" + para for para in text.strip("\n").split("\n\n"))


class Failure(Exception):
    """An expected failure of a day-2 command: one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    raise Failure(message, code)


def err(message: str) -> None:
    click.echo(f"scriptgate: {message}", err=True)


def connection_options(func: F) -> F:
    """--server, --token, --profile, --timeout (see ``admin_client.connect`` for the order)."""
    options = [
        click.option("--server", metavar="URL", default=None,
                     help=f"ScriptGate base URL (default: ${URL_ENV}, the profile, or {DEFAULT_SERVER})"),
        click.option("--token", default=None, help=f"admin token (default: ${TOKEN_ENV} or the profile)"),
        click.option("--profile", default=None, metavar="NAME",
                     help=f"a [NAME] table of ~/.config/scriptgate/profiles.toml (default: ${PROFILE_ENV} or [default])"),
        click.option("--timeout", type=float, default=None, metavar="S",
                     help="per-request timeout in seconds (default 30)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def client_from(kw: dict[str, Any]) -> AdminClient:
    return connect(kw.pop("server", None), kw.pop("token", None), kw.pop("profile", None), kw.pop("timeout", None))


def day2(func: Callable[..., int | None]) -> Callable[..., int]:
    """Run a day-2 command: expected failures become one line and an exit code."""

    def wrapper(*args: Any, **kw: Any) -> int:
        try:
            return func(*args, **kw) or EXIT_OK
        except Failure as exc:
            err(str(exc))
            return exc.code
        except AdminError as exc:
            err(str(exc))
            return EXIT_ACCESS if exc.access else EXIT_ERROR
        except OSError as exc:
            err(exc.strerror or str(exc))
            return EXIT_ERROR

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")(func)


def print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, box=box.SIMPLE_HEAD, title_justify="left", header_style="bold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    # Piped output is not cut to 80 columns: `scriptgate scripts ls | grep` must see whole rows.
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 250, soft_wrap=False)
    console.print(table)
