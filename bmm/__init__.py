"""bmm: bare-metal instances for OpenNebula.

The version is a literal here, read by the build (pyproject.toml, tool.setuptools.dynamic), so
a driver that reports it never pays for importlib.metadata (some 30 ms of a cold start)."""

__version__ = "0.1.0"
