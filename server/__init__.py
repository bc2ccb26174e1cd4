"""ScriptGate's server package."""

# The one definition of the release number: pyproject.toml reads it (dynamic version) and
# ``scriptgate --version`` prints it. Not importlib.metadata: a checkout run with
# PYTHONPATH next to an older installed copy would report the installed version.
__version__ = "0.2.0"
