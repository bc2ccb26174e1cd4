"""Shared fixtures: real Redis servers started on free ports (see conftest_redis.py)."""

from conftest_redis import *  # noqa: F403
