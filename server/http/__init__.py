"""HTTP front end: the callback connection path and the admin API handlers (Tornado)."""
