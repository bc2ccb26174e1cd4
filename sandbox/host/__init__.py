"""Host side of the sandbox: the worker pool, fair scheduling, forking, the spin selector.

Never imports ``sandbox.worker``: the host and the confined worker share only
``sandbox.api``, ``sandbox.protocol``, ``sandbox.kvops`` and ``sandbox.policy``.
"""
