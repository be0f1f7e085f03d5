"""A stand-in for Tilera's `tile-monitor`, acting on a booted lab board over ssh.

The lab installs it as DIR/bin/tile-monitor (a wrapper that sets the lab key). It accepts the
option grammar the Tilera proxy used (docs/pdu-dialect.md has the board notes too):

    tile-monitor --resume --net IP [ACTION ...] [--quit] [-- CMD ARGS...]

    ACTION:  --run D CMD ARGS... D   run CMD on the board; D is the delimiter word that follows
                                     --run (the blueprint uses "-") and closes the command
             --wait                  wait for the previous --run (runs are synchronous here, so
                                     this is a barrier that always holds)
             --upload SRC DST        copy the local file SRC to DST on the board (sftp)
             --download SRC DST      copy SRC on the board to the local file DST
    --quit   leave after the actions (the real tool would otherwise stay attached)
    -- CMD   run the rest of the command line on the board and print its output (dmesg ...)

Every command word crosses the wire shell-quoted (shlex), so no value becomes shell syntax.
A command that fails stops the sequence: its exit status becomes tile-monitor's, with one
line on stderr naming the board and the command. A board that does not answer ssh within the
connect deadline is exit 1, "board IP does not answer".

Settings (environment; the lab wrapper sets the first two):
  BMM_TILE_MONITOR_KEY          private key for root@board (default: ssh's usual keys)
  BMM_TILE_MONITOR_KNOWN_HOSTS  known_hosts file (host keys are accepted and recorded when new)
  BMM_TILE_MONITOR_PORT (22), BMM_TILE_MONITOR_USER (root),
  BMM_TILE_MONITOR_CONNECT_TIMEOUT (10 s), BMM_TILE_MONITOR_RUN_TIMEOUT (600 s per command)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from bmm.errors import BmmError
from bmm.transport.ssh import SshTarget, wait_for_ssh

PROG = "tile-monitor"


class UsageError(Exception):
    pass


@dataclass
class Plan:
    resume: bool = False
    net: str | None = None
    actions: list[tuple] = field(default_factory=list)   # ("run", argv) ("wait",) ("upload", s, d) ...
    quit: bool = False


def parse(argv: list[str]) -> Plan:
    """Parse tile-monitor's command line (raise UsageError with one line)."""
    plan = Plan()
    i = 0
    n = len(argv)

    def need(count: int, opt: str) -> list[str]:
        if i + count > n - 1:
            raise UsageError(f"{opt} needs {count} argument{'s' if count > 1 else ''}")
        return argv[i + 1:i + 1 + count]

    while i < n:
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1:]
            if not rest:
                raise UsageError("-- needs a command")
            plan.actions.append(("run", rest))
            plan.quit = True
            break
        if arg == "--resume":
            plan.resume = True
            i += 1
        elif arg == "--net":
            (plan.net,) = need(1, "--net")
            i += 2
        elif arg.startswith("--net="):
            plan.net = arg.split("=", 1)[1]
            i += 1
        elif arg == "--run":
            if i + 1 >= n:
                raise UsageError("--run needs a delimiter, a command and the delimiter again "
                                 "(--run - CMD ARGS -)")
            delim = argv[i + 1]
            try:
                end = argv.index(delim, i + 2)
            except ValueError:
                raise UsageError(f"--run {delim} ...: the closing {delim!r} is missing") from None
            words = argv[i + 2:end]
            if not words:
                raise UsageError(f"--run {delim} {delim}: no command between the delimiters")
            plan.actions.append(("run", words))
            i = end + 1
        elif arg == "--wait":
            plan.actions.append(("wait",))
            i += 1
        elif arg in ("--upload", "--download"):
            src, dst = need(2, arg)
            if not src or not dst:
                raise UsageError(f"{arg} needs SRC and DST")
            plan.actions.append((arg[2:], src, dst))
            i += 3
        elif arg == "--quit":
            plan.quit = True
            i += 1
        elif arg in ("-h", "--help"):
            raise UsageError("help")
        else:
            raise UsageError(f"unknown option {arg!r} (the lab stand-in knows --resume, --net, --run, "
                             f"--wait, --upload, --download, --quit and --)")
    if plan.net is None:
        raise UsageError("--net IP is required (the stand-in only talks to boards over the network)")
    if not plan.resume:
        raise UsageError("only --resume is supported: lab boards boot from TFTP at power-on, "
                         "tile-monitor attaches to a booted board")
    return plan


def _target(host: str) -> SshTarget:
    env = os.environ
    try:
        port = int(env.get("BMM_TILE_MONITOR_PORT", "22"))
        connect_timeout = float(env.get("BMM_TILE_MONITOR_CONNECT_TIMEOUT", "10"))
    except ValueError:
        raise UsageError("BMM_TILE_MONITOR_PORT / _CONNECT_TIMEOUT must be numbers") from None
    return SshTarget(
        host=host, port=port, user=env.get("BMM_TILE_MONITOR_USER", "root"),
        key_file=env.get("BMM_TILE_MONITOR_KEY") or None,
        known_hosts=env.get("BMM_TILE_MONITOR_KNOWN_HOSTS") or None,
        host_key_policy="accept-new", connect_timeout=min(connect_timeout, 10.0), node=None,
    )


def execute(plan: Plan, out=sys.stdout, err=sys.stderr) -> int:
    target = _target(plan.net)
    connect_timeout = float(os.environ.get("BMM_TILE_MONITOR_CONNECT_TIMEOUT", "10"))
    run_timeout = float(os.environ.get("BMM_TILE_MONITOR_RUN_TIMEOUT", "600"))
    try:
        session = wait_for_ssh(target, deadline=time.monotonic() + connect_timeout, interval=0.5)
    except BmmError as exc:
        print(f"{PROG}: board {plan.net} does not answer ({exc.reason})", file=err)
        return 1
    with session:
        for action in plan.actions:
            kind = action[0]
            try:
                if kind == "run":
                    words = action[1]
                    res = session.run(words, timeout=run_timeout, check=False)
                    out.write(res.stdout)
                    out.flush()
                    err.write(res.stderr)
                    err.flush()
                    if res.returncode != 0:
                        print(f"{PROG}: board {plan.net}: {' '.join(words)!s} exited {res.returncode}",
                              file=err)
                        return res.returncode if 0 < res.returncode < 256 else 1
                elif kind == "upload":
                    src, dst = action[1], action[2]
                    if not os.path.isfile(src):
                        print(f"{PROG}: --upload: {src} is not a file", file=err)
                        return 1
                    session.put_file(src, dst)
                elif kind == "download":
                    src, dst = action[1], action[2]
                    sftp = session.client.open_sftp()
                    try:
                        sftp.get(src, dst)
                    finally:
                        sftp.close()
                # "wait": runs are synchronous; nothing is pending
            except (OSError, EOFError) as exc:
                what = {"upload": "upload", "download": "download"}.get(kind, kind)
                print(f"{PROG}: board {plan.net}: {what} failed: {exc}", file=err)
                return 1
            except BmmError as exc:
                print(f"{PROG}: board {plan.net}: {exc.reason}", file=err)
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plan = parse(argv)
    except UsageError as exc:
        if str(exc) == "help":
            print(__doc__)
            return 0
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return execute(plan)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
