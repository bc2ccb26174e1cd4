"""The ``scriptgate`` command line. Each subcommand lives in its own module; this file only
parses arguments, turns expected failures into one-line errors and sets exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from server import __version__
from server.config import OPENIM_LINES, ConfigError

EXIT_OK, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def _serve(args: argparse.Namespace) -> int:
    from server import config as config_mod
    from server.catalog import catalog
    from server.serve import run

    cfg = config_mod.load(args.config, set(catalog().commands))
    for name in ("host", "port", "redis", "workers", "sandbox_workers", "sandbox_spin_us", "prefix", "path_prefix",
                 "openim", "drain_grace_s"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.scripts is not None:
        cfg.scripts_dir = args.scripts
    if args.record:
        cfg.record = True
    config_mod.validate(cfg, set(catalog().commands))
    return run(cfg)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the callback server",
        description="Run the OpenIM callback server. With no --redis it uses an embedded in-process store.",
    )
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default 10006)")
    p.add_argument("--redis", metavar="URL", help="redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// URL")
    p.add_argument("--workers", type=int, metavar="N", help="HTTP processes sharing the port (default: one per core)")
    p.add_argument("--sandbox-workers", type=int, metavar="N", help="script worker processes per HTTP process (default 4)")
    p.add_argument("--sandbox-spin-us", type=int, metavar="US",
                   help="poll this long before sleeping while a script call is out (default 25; 0 = never)")
    p.add_argument("--scripts", metavar="DIR", help="load DIR/<callbackCommand>.py at start (uploaded when changed)")
    p.add_argument("--drain-grace", dest="drain_grace_s", type=float, metavar="S",
                   help="on SIGTERM/SIGINT, seconds in-flight callbacks get to finish (default 10)")
    p.add_argument("--record", action="store_true", help="record every callback (see the config file for sampling)")
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--prefix", help="key prefix in Redis (default scriptgate)")
    p.add_argument("--path-prefix", metavar="SECRET", help="secret path segment callbacks must start with")
    p.add_argument("--openim", choices=OPENIM_LINES,
                   help="the OpenIM line that calls this server, for upload checks (default main; docs/openim.md)")
    p.set_defaults(func=_serve)


def _register_offline(sub: argparse._SubParsersAction) -> None:
    try:
        from server import cli_offline
    except ImportError:  # pragma: no cover - during development only
        return
    cli_offline.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scriptgate",
        description="ScriptGate: OpenIM webhook callbacks answered by sandboxed Python scripts.",
    )
    parser.add_argument("--version", action="version", version=f"scriptgate {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _register_offline(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CLIError, ConfigError) as exc:
        print(f"scriptgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except OSError as exc:
        print(f"scriptgate: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
