"""`bmm power status|on|off|soft-off|cycle|reset NODE... [--json]`: many nodes at once."""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import click

from bmm.errors import BmmError

ACTIONS = {
    "status": "Show each node's power state (on, off or unknown).",
    "on": "Power the nodes on (nothing to do when already on), verified.",
    "off": "Power the nodes off, hard (nothing to do when already off), verified.",
    "soft-off": "Ask the nodes' OS to shut down (ACPI soft-off or `poweroff` over ssh), verified.",
    "cycle": "Power off, then on; each step verified.",
    "reset": "Hard reset (a node that is off is powered on), verified.",
}


def run_one(name: str, action: str, inventory_path: str | None) -> dict:
    """Run one action on one node; never raises. The result is what --json prints."""
    result = {"name": name, "driver": None, "power": "unknown", "error": None}
    try:
        from bmm.inventory import load_node
        from bmm.power import power_for

        node = load_node(name, inventory_path)
        result["driver"] = node.power.driver
        power = power_for(node)
        result["power"] = power.do(action.replace("-", "_"))
    except BmmError as exc:
        result["error"] = exc.reason
        result["error_kind"] = _kind(exc)
    except Exception as exc:  # noqa: BLE001 - one node's bug must not hide the others' results
        if logging.getLogger("bmm").isEnabledFor(logging.DEBUG):
            logging.getLogger("bmm.power").exception("node %s", name)
        result["error"] = f"internal error: {type(exc).__name__}: {exc}"
        result["error_kind"] = "internal"
    return result


def _kind(exc: BmmError) -> str:
    from bmm.errors import ConfigError, FatalError, TimeoutExpired, TransientError

    for cls, kind in ((TimeoutExpired, "timeout"), (TransientError, "transient"),
                      (FatalError, "fatal"), (ConfigError, "config")):
        if isinstance(exc, cls):
            return kind
    return "error"


def run_many(names: list[str], action: str, inventory_path: str | None, parallel: int) -> list[dict]:
    names = list(dict.fromkeys(names))  # once each, in the order given
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(names)))) as pool:
        return list(pool.map(lambda n: run_one(n, action, inventory_path), names))


def _make(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text + " Every call has a deadline (the node's timeout_s).")
    @click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, driver, power, error}.")
    @click.option("--inventory", "inventory_path", type=click.Path(dir_okay=False),
                  help="The nodes file (default: $BMM_INVENTORY, bmm.toml, /etc/one/bmm/nodes.toml).")
    @click.option("--parallel", default=8, show_default=True, type=click.IntRange(1, 256),
                  help="Nodes handled at once (commands to one BMC/PDU are still serialised).")
    @click.option("-v", "--verbose", is_flag=True, help="Log each step to stderr.")
    def command(nodes, as_json, inventory_path, parallel, verbose):
        if verbose:
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(message)s")
        results = run_many(list(nodes), action, inventory_path, parallel)
        if as_json:
            click.echo(json.dumps([{k: r.get(k) for k in ("name", "driver", "power", "error")}
                                   for r in results], indent=2))
        else:
            for r in results:
                if r["error"]:
                    click.echo(f"{r['name']}: error: {r['error']}")
                else:
                    click.echo(f"{r['name']}: {r['power']}")
        failed = [r for r in results if r["error"]]
        if failed:
            sys.exit(1)

    return command


@click.group("power")
def cli():
    """Switch and query node power through BMCs (ipmi), PDU outlets (pdu), the OS (ssh) or
    an operator (manual). Nodes are handled concurrently; exit status 1 if any node failed."""


for _action, _help in ACTIONS.items():
    cli.add_command(_make(_action, _help))
