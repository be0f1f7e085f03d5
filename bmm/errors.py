"""The error vocabulary every layer of bmm shares.

Every error a user can see is a BmmError: one human line naming the node (when there is one)
and the cause. Power and transport code also say whether a retry can help. Callers decide by
type, never by matching message text.

Error text never quotes driver input (argv, the VM XML, context.sh): input may hold a secret
or be crafted, and OpenNebula copies the text into the VM log and USER_TEMPLATE/ERROR. Say
which argument or line is wrong and what was expected instead.
"""


class BmmError(Exception):
    """A failure to report to the user as one line. Never carries a secret."""

    def __init__(self, message: str, *, node: str | None = None):
        self.node = node
        self.reason = message
        super().__init__(f"node {node}: {message}" if node else message)


class InputError(BmmError):
    """Driver input (argv, stdin, files OpenNebula wrote) that cannot be used."""


class ConfigError(BmmError):
    """Configuration or inventory is wrong; retrying cannot help."""


class NotInInventory(ConfigError):
    """An OpenNebula host name that no inventory node carries."""


class FatalError(BmmError):
    """Authentication failure, unknown host, missing tool: retrying cannot help."""


class AuthError(FatalError):
    """A peer (BMC, PDU, ssh) refused bmm's credentials."""


class TransientError(BmmError):
    """Timeout, busy peer, dropped link: a bounded retry may help."""


class TimeoutExpired(TransientError):
    """A deadline passed while waiting for something."""


class CorruptCopy(BmmError):
    """A copy's bytes arrived altered: the node's checksum differs from the sender's."""


class NotSupported(BmmError):
    """An OpenNebula action that bare metal cannot honour. The words "not supported" come
    first: oned keeps only the first 100 characters of an error in the VM's ERROR."""

    def __init__(self, action: str, advice: str = ""):
        super().__init__(f"{action} is not supported on bare metal" + (f": {advice}" if advice else ""))
        self.action = action


class LockedError(BmmError):
    """Another action holds the node."""


class Refused(BmmError):
    """The node's record does not allow the action (another VM owns the node, or its state
    forbids it). Raised before anything touches the machine."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM) in the middle of an action. A BaseException,
    like KeyboardInterrupt, so the action's own clean-up and state rollback still run."""

    def __init__(self, signame: str = "SIGTERM"):
        super().__init__(f"interrupted by {signame}")
        self.signame = signame
