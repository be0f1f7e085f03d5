"""Re-arm a node whose instance fell back to the home OS: `python -m vmm_drivers.rearm CONFIG NODE VM`.

The monitor finds it (the tenant rebooted itself, or GRUB's one-shot entry was used up, or the
machine was power-cycled from its BMC) but must not do a minutes-long reboot inside a probe
that has a deadline. It starts this process instead, detached; the process takes the node's
lock like any action, checks again that the instance is still expected to run and that the
home OS is what answers, and reboots the machine into the instance once. While it runs the
node is `rebooting`, so the monitor reports nothing; if it fails the node is left in error
with the reason, and reported POWEROFF: never RUNNING for the home OS.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from bmm import logs
from bmm.config import load_config
from bmm.guard import guarded, raise_on_sigterm
from bmm.inventory import node_for_host
from bmm.opennebula.args import check_host_name, parse_id
from bmm.opennebula.reply import Reporter


def start_rearm(config, node: str, vm_id: int) -> None:
    """Start a detached re-arm of node for vm_id, unless an action holds the node already
    (that action owns the node's state; a second re-arm would only wait for it)."""
    from bmm.state import open_store

    if open_store(config=config).holder(node) is not None:
        return
    argv = [sys.executable, "-m", "vmm_drivers.rearm", str(config.source or ""), node, str(vm_id)]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    from vmm_drivers.base import VmmCall
    from bmm.kinds import kind_class

    if len(argv) != 3:
        print("usage: python -m vmm_drivers.rearm CONFIG NODE VM", file=sys.stderr)
        return 2
    raise_on_sigterm()
    config = load_config(Path(argv[0]) if argv[0] else None)
    logs.configure(config.log_path)
    node_name = check_host_name(argv[1], "the node argument")
    vm_id = parse_id(argv[2], "the VM id argument")
    reporter = Reporter(vm_id, live=False)

    def body() -> None:
        node = node_for_host(config, node_name)
        driver = kind_class(node.kind, config, node_name=node_name)(node, config, reporter)
        driver.perform("rearm", VmmCall(action="rearm", argv=[], vm_id=vm_id, host=node_name))

    failed: list[str] = []

    def fail(line: str) -> None:
        logging.getLogger("bmm.rearm").error("re-arm of VM %s on %s failed: %s", vm_id, node_name, line)
        failed.append(line)

    guarded(body, on_error=fail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
