"""The ``scriptgate`` command line, on click. Each subcommand lives in its own module
(``server.offline.cli``: run, sample, replay, check, push, export, kv-snapshot;
``server.cli.day2``: scripts, kv, tokens, tail, completion); this file holds the group, ``serve`` and ``main``, which turns
expected failures into one-line errors and returns the exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from server import __version__
from server.cli.common import EXIT_CHANGED, EXIT_ERROR, EXIT_OK, Group, raw
from server.config import OPENIM_LINES, ConfigError

__all__ = ["EXIT_CHANGED", "EXIT_ERROR", "EXIT_OK", "CLIError", "cli", "main"]

PROG = "scriptgate"
COMPLETE_VAR = "_SCRIPTGATE_COMPLETE"


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 2."""


@click.group(cls=Group, name=PROG, context_settings={"help_option_names": ["-h", "--help"]},
             help="ScriptGate: OpenIM webhook callbacks answered by sandboxed Python scripts.",
             epilog=raw("Exit codes: 0 ok; 1 a difference or a failed check (diff, replay, check, push);\n"
                        "2 usage errors and refused requests; 3 (day-2 commands) the server cannot be\n"
                        "reached or the token is missing or refused. See docs/cli.md."))
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="log level (default INFO)")
def cli(log_level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command("serve", short_help="run the callback server",
             help="Run the OpenIM callback server. With no --redis it uses an embedded in-process store.")
@click.option("--host", help="address to listen on (default 0.0.0.0)")
@click.option("--port", type=int, help="port (default 10006)")
@click.option("--redis", metavar="URL", help="redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// URL")
@click.option("--workers", type=int, metavar="N", help="HTTP processes sharing the port (default: one per core)")
@click.option("--sandbox-workers", type=int, metavar="N", help="script worker processes per HTTP process (default 4)")
@click.option("--sandbox-spin-us", type=int, metavar="US",
              help="poll this long before sleeping while a script call is out (default 25; 0 = never)")
@click.option("--event-loop", type=click.Choice(["uvloop", "asyncio"]),
              help="the HTTP process's event loop (default uvloop; docs/configuration.md)")
@click.option("--scripts", metavar="DIR", help="load DIR/<callbackCommand>.py at start (uploaded when changed)")
@click.option("--drain-grace", "drain_grace_s", type=float, metavar="S",
              help="on SIGTERM/SIGINT, seconds in-flight callbacks get to finish (default 10)")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="server log lines as text (default) or JSON with the operationID on callback lines")
@click.option("--record", is_flag=True, help="record every callback (see the config file for sampling)")
@click.option("--config", metavar="FILE", help="TOML config file")
@click.option("--prefix", help="key prefix in Redis (default scriptgate)")
@click.option("--path-prefix", metavar="SECRET", help="secret path segment callbacks must start with")
@click.option("--openim", type=click.Choice(OPENIM_LINES),
              help="the OpenIM line that calls this server, for upload checks (default main; docs/openim.md)")
def serve_command(**kw: Any) -> int:
    return _serve(argparse.Namespace(**kw))


def _serve(args: argparse.Namespace) -> int:
    from server import config as config_mod
    from server.catalog import catalog
    from server.serve import run

    cfg = config_mod.load(args.config, set(catalog().commands))
    for name in ("host", "port", "redis", "workers", "sandbox_workers", "sandbox_spin_us", "event_loop", "prefix", "path_prefix",
                 "openim", "drain_grace_s", "log_format"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.scripts is not None:
        cfg.scripts_dir = args.scripts
    if args.record:
        cfg.record = True
    config_mod.validate(cfg, set(catalog().commands))
    return run(cfg)


def _register() -> None:
    from server.cli import day2 as cli_day2
    from server.offline import cli as cli_offline

    cli_offline.register(cli)
    cli_day2.register(cli)


_register()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. --help and --version raise SystemExit(0), usage
    errors SystemExit(2), as with argparse."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args, prog_name=PROG, standalone_mode=False, complete_var=COMPLETE_VAR)
    except click.UsageError as exc:
        # As argparse did: usage errors end the program (SystemExit 2) after the usage text.
        exc.show()
        raise SystemExit(EXIT_ERROR) from None
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return EXIT_ERROR
    except (CLIError, ConfigError) as exc:
        print(f"scriptgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except OSError as exc:
        print(f"scriptgate: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
