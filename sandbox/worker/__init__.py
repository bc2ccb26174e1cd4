"""What runs inside a confined worker process: the RestrictedPython runtime, guards,
budgets, the KV stubs, confinement and the template. Never imported by the host.
"""
