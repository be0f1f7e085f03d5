"""bmm: bare-metal instances for OpenNebula."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bmm")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.1.0"
