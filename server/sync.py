"""Read-your-writes between the HTTP processes of one instance.

With ``--workers N`` > 1 the supervisor creates, before forking, a small shared-memory
array (``multiprocessing.Array`` of int64, no lock: each slot has one writer):

* ``gen[i]``: the script-registry generation HTTP process ``i`` serves (-1: not serving
  scripts yet, or gone). A process publishes it after each table refresh.
* ``rec_in[i]`` / ``rec_out[i]``: records process ``i`` has queued / finished writing
  (written or dropped) to the store.

An admin write through process ``i`` gets the generation its transaction created, loads
it itself, then waits until every serving sibling's ``gen`` slot reaches it (the siblings
hear of the change by pub/sub within milliseconds, at worst by the 0.5 s poll), bounded
by ``sync_timeout_s``. ``GET /admin/recordings`` first waits until every process has
finished writing what it had queued when the read came in (the reply to a callback is
written after its record is queued, so that includes every answered callback).

Slots are reset to -1 / equal counts by the supervisor when a process dies, so a
restarting process never holds a write up.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

POLL_S = 0.002  # how often a waiting admin request looks at the slots; they change in ms


@dataclass
class Siblings:
    """The shared slots and this process's index in them (``index`` -1: the supervisor)."""

    gen: Any
    rec_in: Any
    rec_out: Any
    index: int = -1

    @classmethod
    def create(cls, processes: int) -> Siblings:
        ctx = multiprocessing.get_context("fork")
        gen = ctx.Array("q", [-1] * processes, lock=False)
        return cls(gen, ctx.Array("q", processes, lock=False), ctx.Array("q", processes, lock=False))

    def bind(self, index: int) -> Siblings:
        return Siblings(self.gen, self.rec_in, self.rec_out, index)

    def reset(self, index: int) -> None:
        """Process ``index`` is gone (supervisor): nobody waits for it any more."""
        self.gen[index] = -1
        self.rec_out[index] = self.rec_in[index]

    def serving(self, generation: int) -> None:
        if self.index >= 0:
            self.gen[self.index] = generation

    def queued(self) -> None:
        if self.index >= 0:
            self.rec_in[self.index] += 1

    def written(self) -> None:
        if self.index >= 0:
            self.rec_out[self.index] += 1

    def lagging(self, generation: int) -> list[int]:
        """The other serving processes that do not serve ``generation`` yet."""
        return [i for i, g in enumerate(self.gen) if 0 <= g < generation and i != self.index]

    async def wait_generation(self, generation: int, timeout: float) -> bool:
        """True once every serving process serves ``generation`` (or a later one)."""
        deadline = time.monotonic() + timeout
        while self.lagging(generation):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def wait_recordings(self, timeout: float) -> bool:
        """True once every process has written what it had queued when this was called."""
        target = list(self.rec_in)
        deadline = time.monotonic() + timeout
        while any(self.rec_out[i] < t for i, t in enumerate(target)):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True
