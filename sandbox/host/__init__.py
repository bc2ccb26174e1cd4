"""Host side of the sandbox: the worker pool (``pool``) and its parts (``workerhandle``,
``recycling``, ``kvrelay``, ``results``), fair scheduling (``fairness``), forking from the
template (``forker``), the spin selector (``spin``).

Never imports ``sandbox.worker``: the host and the confined worker share only
``sandbox.api``, ``sandbox.protocol``, ``sandbox.kvops`` and ``sandbox.policy``.
"""
