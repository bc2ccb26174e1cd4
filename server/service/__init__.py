"""Use cases: answer a callback, manage scripts. HTTP handlers and the CLI call these."""
