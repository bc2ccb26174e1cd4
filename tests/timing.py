"""Room for a loaded machine in tests that bound a duration.

A bound says "this happened because of X, not because of a later limit Y": it is set to
X + ``SLACK_S``, and the test makes Y (the wall budget, the deadline, the poll interval)
far larger than that, so the bound separates the two causes without betting on how
quickly a busy 2-core CI machine schedules a process or a timer.
"""

from __future__ import annotations

# What a loaded 2-core machine (xdist workers, worker processes being spawned, Redis
# servers) has been seen to add to a timer or a round trip, with room to spare.
SLACK_S = 5.0
# A limit far beyond any bound of the form X + SLACK_S, for the cause a test rules out.
FAR_S = 60.0
