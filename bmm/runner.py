"""Run local commands as argv lists, with a deadline, and errors that never leak secrets."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bmm.errors import BmmError, FatalError, TimeoutExpired

REDACTED = "******"


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(
    argv: list[str] | tuple[str, ...],
    *,
    timeout: float,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    check: bool = True,
    secrets: Iterable[str] = (),
    node: str | None = None,
    cwd: str | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Result:
    """Run argv (never through a shell). Raise FatalError if the tool is missing,
    TimeoutExpired past the deadline, BmmError on a non-zero exit when check is set."""
    argv = tuple(str(a) for a in argv)
    secrets = tuple(secrets)
    full_env = dict(os.environ if env is None else env)
    if extra_env:
        full_env.update(extra_env)
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            text=text,
            errors="replace" if text else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL if input is None else None,
            pass_fds=pass_fds,
        )
    except FileNotFoundError as exc:
        raise FatalError(f"{argv[0]} is not installed ({exc.strerror})", node=node) from None
    except subprocess.TimeoutExpired:
        raise TimeoutExpired(f"{argv[0]} did not finish within {timeout:g} s", node=node) from None
    stdout = proc.stdout if text else proc.stdout.decode(errors="replace")
    stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
    result = Result(argv, proc.returncode, redact(stdout, secrets), redact(stderr, secrets))
    if check and proc.returncode != 0:
        cause = last_line(result.stderr) or last_line(result.stdout) or "no output"
        raise BmmError(f"{argv[0]} failed (exit {proc.returncode}): {cause}", node=node)
    return result


class LocalExecutor:
    """Runs argv on this machine with the same interface as transport.ssh.SshSession,
    so mechanisms (LVM, GRUB, image streaming) run unchanged locally or on a node."""

    def __init__(self, *, node: str | None = None, extra_env: Mapping[str, str] | None = None):
        self.node = node
        self.extra_env = dict(extra_env or {})

    def run(self, argv, *, timeout: float, input=None, check: bool = True, secrets=()) -> Result:
        return run(argv, timeout=timeout, input=input, check=check, secrets=secrets,
                   node=self.node, extra_env=self.extra_env)

    def run_stream_in(self, argv, source, *, timeout: float) -> Result:
        """Run argv, feeding stdin from source() until it returns None."""
        import time

        env = dict(os.environ)
        env.update(self.extra_env)
        try:
            proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except FileNotFoundError:
            raise FatalError(f"{argv[0]} is not installed", node=self.node) from None
        deadline = time.monotonic() + timeout
        try:
            try:
                while True:
                    chunk = source()
                    if chunk is None:
                        break
                    proc.stdin.write(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutExpired(f"{argv[0]} did not finish within {timeout:g} s", node=self.node)
            except BrokenPipeError:
                pass        # the receiver ended early: its exit status and stderr say why
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TimeoutExpired(f"{argv[0]} did not finish within {timeout:g} s", node=self.node) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result = Result(tuple(str(a) for a in argv), proc.returncode,
                        out.decode(errors="replace"), err.decode(errors="replace"))
        if proc.returncode != 0:
            cause = last_line(result.stderr) or "no output"
            raise BmmError(f"{argv[0]} failed (exit {proc.returncode}): {cause}", node=self.node)
        return result
