"""`bmm doctor`: is this front-end able to run bmm, check by check (like Ironic's
`baremetal node validate`). Every check is one line: what was checked, ok or not, and why.

Checks that would touch a machine only ask: a BMC/PDU power status, an ssh banner. Nothing
is switched, written or logged into.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bmm.config import Config, frontend_remotes
from bmm.errors import BmmError

TOOLS = {
    "ipmitool": "ipmitool", "ssh": "openssh-client", "qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils",
    "xorriso": "xorriso", "sfdisk": "fdisk", "blkid": "util-linux",
}
PDU_TOOLS = {"telnet": "telnet"}
NODE_WORKERS = 16
NODE_TIMEOUT_S = 20.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}" + (f": {self.detail}" if self.detail else "")


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except BmmError as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, not a crash
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def tools(inventory) -> Iterator[Check]:
    wanted = dict(TOOLS)
    if inventory is not None and any(n.power.driver == "pdu" for n in inventory):
        wanted.update(PDU_TOOLS)
    missing = {tool: pkg for tool, pkg in wanted.items() if shutil.which(tool) is None}
    yield Check("tools", not missing,
                f"missing {', '.join(missing)} (apt-get install {' '.join(sorted(set(missing.values())))})"
                if missing else ", ".join(sorted(wanted)))


def node_checks(node) -> list[Check]:
    """Power and ssh of one node, each asked once (never switched)."""
    from bmm.power import power_for
    from bmm.transport.ssh import reachable

    out = []

    def power() -> Check:
        state = power_for(node).status()
        return Check(f"node {node.name}: power ({node.power.driver})", state in ("on", "off"), f"{state}")

    def ssh() -> Check:
        target = node.ssh.target(node.name)
        ok = reachable(target, 5.0)
        return Check(f"node {node.name}: ssh {target.describe()}", ok or node.kind == "netboot",
                     "answers" if ok else "no ssh server answers" + (" (a board may be off)" if node.kind == "netboot" else ""))

    out.append(_guard(f"node {node.name}: power", power))
    if node.ssh.address:
        out.append(_guard(f"node {node.name}: ssh", ssh))
    return out


def run(config: Config, *, url: str | None = None, auth: str | None = None, with_nodes: bool = True,
        with_oned: bool = True) -> list[Check]:
    from bmm.inventory import inventory_path, load_inventory, validate_inventory

    checks = [Check("config", True, str(config.source) if config.source else "defaults (no bmm.toml found)")]
    inv_path = inventory_path(config=config)
    problems = validate_inventory(inv_path)
    checks.append(Check("inventory", not problems,
                        f"{problems[0]}" + (f" (and {len(problems) - 1} more; run `bmm nodes validate`)"
                                            if len(problems) > 1 else "") if problems else f"{inv_path}"))
    inventory = load_inventory(inv_path, strict=False) if inv_path.exists() else None
    checks.extend(tools(inventory))
    checks.append(_guard("state database", lambda: _state_db(config)))
    checks.extend(_remotes_checks(remotes_of(config)))
    if with_oned:
        checks.append(_guard("oned", lambda: _oned(url, auth)))
    if with_nodes and inventory is not None:
        with ThreadPoolExecutor(max_workers=NODE_WORKERS) as pool:
            futures = [pool.submit(node_checks, node) for node in inventory]
            for future in futures:
                try:
                    checks.extend(future.result(timeout=NODE_TIMEOUT_S * 4))
                except Exception as exc:  # noqa: BLE001 - a hung BMC fails its node's checks only
                    checks.append(Check("node checks", False, f"did not finish ({type(exc).__name__})"))
    return checks


def _state_db(config: Config) -> Check:
    from bmm.state import open_store

    store = open_store(config=config)
    store.all()
    directory = Path(store.path).parent
    import os
    writable = os.access(directory if directory.exists() else directory.parent, os.W_OK)
    return Check("state database", writable, f"{store.path}" + ("" if writable else " (not writable by this user)"))


def remotes_of(config: Config) -> Path:
    """The remotes directory whose bmm.toml this is (<remotes>/etc/bmm/bmm.toml), else the
    front-end's."""
    source = config.source
    if source is not None and source.parent.name == "bmm" and source.parent.parent.name == "etc":
        return source.parent.parent.parent
    return frontend_remotes()


def _remotes_checks(remotes: Path) -> Iterator[Check]:
    from bmm import oned_config
    from bmm.remotes import stale_remotes

    if not remotes.is_dir():
        yield Check("remotes", False, f"{remotes} does not exist (is OpenNebula installed? install.sh --remotes DIR)")
        return
    python = _installed_python(remotes) or sys.executable
    stale = stale_remotes(remotes, python=python)
    yield Check("remotes", not stale, f"{remotes}: " + (f"{len(stale)} file(s) differ from this bmm, e.g. {stale[0]} "
                                                          "(run install.sh)" if stale else "match this bmm"))
    etc = remotes.parent.parent / "etc" if (remotes.parent.parent / "etc" / "oned.conf").exists() else Path("/etc/one")
    for name, fn in (("oned.conf", oned_config.oned_problems), ("monitord.conf", oned_config.monitord_problems)):
        path = etc / name
        if not path.exists():
            yield Check(name, False, f"{path} does not exist")
            continue
        problems = fn(path.read_text())
        yield Check(name, not problems, f"{path}: " + ("; ".join(problems) if problems else "carries bmm's blocks"))


def _installed_python(remotes: Path) -> str | None:
    """The interpreter the installed scripts run (their shebang), so the comparison is exact."""
    try:
        first = (remotes / "vmm" / "bmm" / "deploy").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[2:].strip() if first.startswith("#!") else None


def _oned(url: str | None, auth: str | None) -> Check:
    from bmm.opennebula.client import connect, endpoint

    one = connect(url, auth=auth)
    return Check("oned", True, f"{endpoint(url)}: OpenNebula {one.system.version()}")


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
