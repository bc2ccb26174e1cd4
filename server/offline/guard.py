"""How every offline and client command ends: expected failures as one ``scriptgate:``
line on stderr and exit status 2, never a traceback.

``server.cli.main`` may run as ``__main__``, in which case its exception classes are not the
ones these modules could import, so nothing here relies on them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sandbox.host.pool import WorkerStartError
from server.cli.admin_client import AdminError
from server.config import ConfigError
from server.offline.env import OfflineError

EXIT_OK, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2


def err(message: str) -> None:
    print(f"scriptgate: {message}", file=sys.stderr)


def guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (OfflineError, AdminError, ConfigError) as exc:
            err(str(exc))
        except WorkerStartError as exc:
            err(f"the sandbox could not start: {exc}")
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            err(f"{where}{exc.strerror or exc}")
        return EXIT_ERROR

    wrapper.__name__ = func.__name__
    return wrapper
