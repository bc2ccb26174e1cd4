"""Offline tools: the CLI commands that run scripts without a server (check, test, replay)."""
