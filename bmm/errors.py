"""The error vocabulary every layer of bmm shares.

Every error a user can see is a BmmError: one human line naming the node (when there is one)
and the cause. Power and transport code also say whether a retry can help.
"""


class BmmError(Exception):
    """A failure to report to the user as one line. Never carries a secret."""

    def __init__(self, message: str, *, node: str | None = None):
        self.node = node
        self.reason = message
        super().__init__(f"node {node}: {message}" if node else message)


class ConfigError(BmmError):
    """Configuration or inventory is wrong; retrying cannot help."""


class FatalError(BmmError):
    """Authentication failure, unknown host, missing tool: retrying cannot help."""


class TransientError(BmmError):
    """Timeout, busy peer, dropped link: a bounded retry may help."""


class TimeoutExpired(TransientError):
    """A deadline passed while waiting for something."""


class NotSupported(BmmError):
    """An OpenNebula action that bare metal cannot honour."""

    def __init__(self, action: str):
        super().__init__(f"{action} is not supported on bare metal")
        self.action = action


class LockedError(BmmError):
    """Another action holds the node."""
