"""The in-memory KVPort for in-process script tests: one implementation, shared with the
attack suite (``tests/attacks/fakeport.py``)."""

from attacks.fakeport import DictKV as FakeKV

__all__ = ["FakeKV"]
