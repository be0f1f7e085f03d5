"""`bmm doctor`: check this front-end, one line per check."""

from __future__ import annotations

import json
import sys

import click

from bmm.config import load_config


@click.command("doctor")
@click.option("--one", "url", metavar="URL", envvar="ONE_XMLRPC",
              help="oned's XML-RPC endpoint [env ONE_XMLRPC; default http://localhost:2633/RPC2].")
@click.option("--auth", "auth", metavar="FILE", envvar="ONE_AUTH", help="File holding user:password [env ONE_AUTH].")
@click.option("--no-nodes", is_flag=True, help="Skip the per-node checks (BMC/PDU power status, ssh).")
@click.option("--no-oned", is_flag=True, help="Skip the check that oned answers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of {name, ok, detail}.")
def cli(url, auth, no_nodes, no_oned, as_json):
    """Check that this front-end can run bmm, one line per check.

    \b
    Checks: bmm.toml; the inventory (as `bmm nodes validate`); the tools bmm runs (ipmitool,
    ssh, qemu-img, xorriso, telnet for PDUs, ...); the state database; the installed remotes
    against this version of bmm; oned.conf and monitord.conf carrying bmm's blocks; oned
    answering XML-RPC; and per node, its BMC/PDU answering a power status and its ssh server
    answering. Nothing is switched or written. Exit status 1 when any check fails.

    \b
    Examples:
      bmm doctor
      bmm doctor --no-nodes --json | jq '.[] | select(.ok | not)'
    """
    from bmm import doctor

    checks = doctor.run(load_config(), url=url, auth=auth, with_nodes=not no_nodes, with_oned=not no_oned)
    if as_json:
        click.echo(json.dumps(doctor.as_json(checks), indent=2))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(0 if all(c.ok for c in checks) else 1)
