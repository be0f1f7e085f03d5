"""`bmm one register|reconcile`: bmm's inventory in OpenNebula, through pyone."""

from __future__ import annotations

import json
import sys

import click

from bmm.config import load_config
from bmm.inventory import inventory_path, load_inventory


def one_options(f):
    f = click.option("--auth", "auth", metavar="FILE", envvar="ONE_AUTH",
                     help="File holding user:password [env ONE_AUTH; default ~/.one/one_auth].")(f)
    f = click.option("--one", "url", metavar="URL", envvar="ONE_XMLRPC",
                     help="oned's XML-RPC endpoint [env ONE_XMLRPC; default http://localhost:2633/RPC2].")(f)
    return click.option("--inventory", "inventory", metavar="FILE", envvar="BMM_INVENTORY",
                        help="Inventory file [default: bmm.toml `inventory`].")(f)


@click.group("one")
def cli():
    """bmm's machines in OpenNebula: register them, and check that both sides agree.

    \b
    Examples:
      bmm one register --dry-run
      bmm one register --images-dir /srv/images
      bmm one reconcile
      bmm one reconcile --fix
    """


@cli.command()
@one_options
@click.option("--cluster", default="bare-metal", show_default=True, help="Cluster for bmm's hosts and datastores.")
@click.option("--images-dir", "images_dirs", multiple=True, metavar="DIR",
              help="Where operators keep images to register (the image datastore's SAFE_DIRS; "
                   "repeatable) [default: /var/tmp, OpenNebula's own default].")
@click.option("--dry-run", is_flag=True, help="Print what would be created or updated; change nothing.")
def register(inventory, url, auth, cluster, images_dirs, dry_run):
    """Create what the inventory needs in OpenNebula, idempotently.

    One cluster; bmm's system and image datastores (TM_MAD bmm; the image datastore keeps each
    image in its own format); one host per node; one VM template per node model that asks for
    the whole machine (`bmm-<model>`); and one VM template per instance type of the Tilera
    field report that the inventory's boards can serve (t64.8x8, tp64.8x8, tgx.4x4, tgx.6x6,
    tgx.8x8, tgx.10x10), asking for a whole board of that family and tile grid. A type no board
    serves is not created (a `skip` line says so, as it does for a board that serves no type).
    Existing objects are compared, never deleted: a difference in an object bmm made is
    updated, anything else is shown as a conflict. A second run changes nothing.

    \b
    Example (10 TILEPro64 boards imported with `bmm nodes import-tilera`):
      $ bmm one register --dry-run
      ...
      would create   template tp64.8x8: instance type, TILEPro64, 64 (8x8) tiles: 10 board(s) (...)
      skip     template tgx.4x4: instance type, TILE-Gx16, 16 (4x4) tiles: no board in the
               inventory serves it, not created
    """
    from bmm.opennebula import register as reg
    from bmm.opennebula.client import connect

    inv = load_inventory(inventory_path(inventory, config=load_config()))
    changes = reg.plan(connect(url, auth=auth), inv, cluster=cluster, safe_dirs=tuple(images_dirs) or ("/var/tmp",))
    if dry_run:
        for change in changes:
            click.echo(f"would {change}" if change.run else str(change))
    else:
        reg.apply(changes, say=click.echo)
    if any(c.action == "conflict" for c in changes):
        sys.exit(1)


@cli.command()
@one_options
@click.option("--fix", is_flag=True, help="Free leaked nodes (wipe the disks of VMs OpenNebula no longer has).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reconcile(inventory, url, auth, fix, as_json):
    """Compare bmm's node states with OpenNebula's hosts and VMs.

    Finds leaked nodes (holding a VM OpenNebula no longer has there), VMs whose node lost
    them, and hosts missing on either side. Exit status 1 when anything differs (after --fix:
    when anything is left).
    """
    from bmm.opennebula.client import connect
    from bmm.opennebula.reconcile import findings
    from bmm.state import open_store

    config = load_config()
    inv = load_inventory(inventory_path(inventory, config=config))
    store = open_store(config=config)
    found = findings(connect(url, auth=auth), inv, store, cleanup=lambda node, vm: _cleanup(config, node, vm))
    left = []
    for finding in found:
        if fix and finding.fix is not None:
            finding.fix()
            click.echo(f"fixed: {finding}")
        else:
            left.append(finding)
    if as_json:
        click.echo(json.dumps([{"node": f.node, "vm_id": f.vm_id, "problem": f.problem, "advice": f.advice}
                               for f in left], indent=2))
    else:
        for finding in left:
            click.echo(str(finding))
        if not left:
            click.echo(f"bmm and OpenNebula agree on {len(inv)} node(s)")
    sys.exit(1 if left else 0)


def _cleanup(config, node, vm_id: int) -> None:
    """What oned's epilog would have done for a VM it no longer has: bmm's TM delete of its
    directory (every disk wiped, the node available), through the kind like any action."""
    from bmm.opennebula.reply import Reporter
    from vmm_drivers.base import TmCall
    from bmm.kinds import kind_class

    reporter = Reporter(vm_id, live=True)
    driver = kind_class(node.kind, config, node_name=node.name)(node, config, reporter)
    driver.perform("tm_delete", TmCall("delete", [], vm_id, None, node.name, "", None))
