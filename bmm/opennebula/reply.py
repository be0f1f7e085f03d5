"""How a driver script answers OpenNebula (protocol §1.4, §1.7).

- Success: exit 0. `deploy` prints exactly one line, the deploy id (never empty: oned would
  store "-").
- Failure: exit 1 and exactly one human line on stderr. OpenNebula 6.10 takes the whole of
  stderr as the FAILURE text, 7.x everything not prefixed with INFO:/ERROR:; with a single line
  both produce the same text.
- Log lines for the VM log (`INFO: <vmid> text`) are therefore held back and written only when
  the action succeeds, or when OpenNebula 7.x is known to be the reader. Someone running a
  remote by hand at a terminal sees them live.
- A traceback only with BMM_DEBUG=1.
- Nothing else ever reaches stderr: run_guarded points fd 2 at a private file for the whole
  action (bmm.logs.captured_stderr), so a library warning or a child process cannot add an
  unprefixed line to OpenNebula's failure text. Every line the Reporter writes is also
  logged to bmm's log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from bmm import logs
from bmm.errors import BmmError
from bmm.guard import freeze_for_exit, guarded, raise_on_sigterm

log = logging.getLogger("bmm.remote")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


class Reporter:
    def __init__(self, vm_id: int | None = None, *, stderr: TextIO | None = None,
                 live: bool | None = None, opennebula_major: int | None = None):
        self.vm_id = vm_id
        self.stderr = stderr or sys.stderr
        self.live = self.stderr.isatty() if live is None else live
        self.opennebula_major = opennebula_major
        self._held: list[str] = []

    def _log(self, level: str, message: str) -> None:
        prefix = f"{level}: {self.vm_id} " if self.vm_id is not None else f"{level}: "
        line = prefix + _one_line(message)
        log.log(logging.ERROR if level == "ERROR" else logging.WARNING if level == "WARN" else logging.INFO,
                "%s", line)
        if self.live:
            print(line, file=self.stderr, flush=True)
        else:
            self._held.append(line)

    def info(self, message: str) -> None:
        self._log("INFO", message)

    def warn(self, message: str) -> None:
        self._log("WARN", message)

    def error(self, message: str) -> None:
        self._log("ERROR", message)

    def progress(self, what: str, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        self.info(f"{what}: {pct}% ({done // (1024 * 1024)} of {total // (1024 * 1024)} MiB)")

    def flush_logs(self) -> None:
        for line in self._held:
            print(line, file=self.stderr)
        self._held.clear()
        self.stderr.flush()

    def fail(self, message: str, code: int = 1) -> NoReturn:
        if self.opennebula_major is not None and self.opennebula_major >= 7:
            self.flush_logs()
        else:
            self._held.clear()
        line = _one_line(message)
        log.error("failed: %s", line)
        print(line, file=self.stderr, flush=True)
        sys.exit(code)


def print_deploy_id(deploy_id: str, stdout: TextIO | None = None) -> None:
    deploy_id = (deploy_id or "").strip()
    if not deploy_id or any(ch.isspace() for ch in deploy_id):
        raise BmmError(f"driver produced an invalid deploy id {deploy_id!r}")
    out = stdout or sys.stdout
    out.write(deploy_id + "\n")
    out.flush()


def opennebula_major(remotes_dir: str | None) -> int | None:
    """The OpenNebula major version from `<remotes>/VERSION`, when it is there."""
    if not remotes_dir:
        return None
    try:
        with open(os.path.join(remotes_dir, "VERSION")) as fh:
            return int(fh.read().strip().split(".")[0])
    except (OSError, ValueError):
        return None


def run_guarded(body: Callable[[Reporter], None], *, opennebula_major: int | None = None) -> NoReturn:
    """Run a driver action: success exits 0 after flushing logs; any error becomes one line.

    stderr is captured for the whole action (see the module docstring); the Reporter writes
    to the real one. SIGTERM raises Terminated, so the action's clean-up runs."""
    logs.quiet()
    raise_on_sigterm()
    with logs.captured_stderr() as real_stderr:
        rep = Reporter(stderr=real_stderr, opennebula_major=opennebula_major)
        guarded(lambda: body(rep), on_error=rep.fail, stderr=real_stderr)
        rep.flush_logs()
        freeze_for_exit()
        sys.exit(0)
