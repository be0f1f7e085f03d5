"""One error guard for the remotes, the IM control script and the `bmm` command.

Whatever goes wrong becomes one line that names the node and the cause: a BmmError's own
text; "interrupted by SIGTERM" / "interrupted"; anything else "internal error (<type>)", with
the traceback in bmm's log (an exception's text may quote input, so it is not shown).
BMM_DEBUG=1 adds the traceback on stderr.

SIGTERM (what `timeout`, systemd and an operator's kill send) is turned into the exception
Terminated, so an action's own clean-up and its node-state rollback run instead of the
process vanishing mid-action. SIGKILL cannot be caught: what it leaves is a transient node
state with a dead owner, which `bmm nodes recover` and the next action fail cleanly.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import traceback
from collections.abc import Callable
from typing import TextIO, TypeVar

from bmm.errors import BmmError, Terminated

log = logging.getLogger("bmm.guard")
T = TypeVar("T")


def freeze_for_exit() -> None:
    """A remote's work is done and its process is about to exit: freeze what the garbage
    collector tracks, so the interpreter's final collections skip it. They would walk every
    object of every module loaded (some 20 ms of a 150 ms cold start, benchmarks/cold_start.py)
    for cycles nobody needs freed: the kernel frees the process, and Python never promises
    __del__ at exit. atexit handlers (the log's flush and close) still run."""
    gc.freeze()


def debug() -> bool:
    return os.environ.get("BMM_DEBUG") == "1"


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for exc."""
    if isinstance(exc, BmmError):
        return str(exc)
    if isinstance(exc, Terminated):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    return f"internal error ({type(exc).__name__}); the traceback is in bmm's log"


def raise_on_sigterm() -> None:
    """Make the first SIGTERM raise Terminated in the main thread; later ones are ignored
    while the clean-up runs (SIGKILL still ends the process)."""
    def handler(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


def guarded(body: Callable[[], T], *, on_error: Callable[[str], object],
            stderr: TextIO | None = None) -> T | None:
    """Run body; on any exception call on_error(<one line>) and return None.
    SystemExit passes through (a deliberate exit code)."""
    try:
        return body()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place every failure is turned into a line
        if debug() and stderr is not None:
            traceback.print_exception(exc, file=stderr)
        on_error(describe_error(exc))
        return None
