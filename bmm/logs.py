"""bmm's log file, and keeping stray output off the stderr OpenNebula parses.

OpenNebula reads a driver's stderr as its answer: 7.x takes every line not prefixed with
INFO:/ERROR:/WARN:/DEBUG: as the failure text, 6.10 all of it, and run_monitord_client
merges stderr into the XML document the IM control script prints. A Python warning, a
logging call with no handler (logging's last-resort handler writes to stderr) or a child
process inheriting fd 2 would corrupt that answer. So a remote:
- points fd 2 at a private temporary file for its whole run (`captured_stderr`), keeping the
  real stderr only for the lines it means to write;
- sends logging (bmm's own, paramiko's, Python warnings) to bmm's log file (`configure`):
  bmm.toml `log_file`, default `bmm.log` beside the state database;
- copies whatever reached fd 2 anyway into that log when it ends.
The log is opened with WatchedFileHandler, so logrotate may move it at any time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
_configured: list[logging.Handler] = []


def configure(log_path: Path | None, *, level: int = logging.INFO) -> bool:
    """Send every log record of this process to log_path (created 0640 if missing). Returns
    False, and logs nowhere, when the file cannot be opened: a driver action never fails
    because its log is unwritable, and never falls back to stderr."""
    root = logging.getLogger()
    for handler in _configured:
        root.removeHandler(handler)
        handler.close()
    _configured.clear()
    handler: logging.Handler
    ok = False
    if log_path is not None:
        try:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.close(fd)
            handler = logging.handlers.WatchedFileHandler(log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            ok = True
        except OSError:
            handler = logging.NullHandler()
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    _configured.append(handler)
    return ok


def quiet() -> None:
    """No log file yet: log records go nowhere rather than to stderr."""
    if not _configured:
        configure(None)


@contextmanager
def captured_stderr() -> Iterator[TextIO]:
    """Point fd 2 (and sys.stderr) at a private temporary file for the block; yield a stream
    on the real stderr. On exit fd 2 is restored and what was captured goes to the log."""
    sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 2)
    old_stderr = sys.stderr
    sys.stderr = open(2, "w", closefd=False, encoding="utf-8", errors="replace")
    try:
        yield real
    finally:
        try:
            sys.stderr.flush()
        except OSError:
            pass
        sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)
        try:
            real.close()
        except OSError:
            pass
        sink.seek(0)
        stray = sink.read(1 << 20).decode("utf-8", errors="replace")
        sink.close()
        if stray.strip():
            logger = logging.getLogger("bmm.stderr")
            for line in stray.splitlines():
                if line.strip():
                    logger.warning("stray stderr: %s", line)
