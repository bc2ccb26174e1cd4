"""Shared fixtures: real Redis servers started on free ports (see conftest_redis.py), and the
CI rule that a skip is a failure unless it is on tests/skip_allowlist.py (skip_policy.py)."""

from conftest_redis import *  # noqa: F403
from skip_policy import *  # noqa: F403
