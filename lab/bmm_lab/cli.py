"""`bmm lab`: a simulated rack on this machine, built from real peers."""

from __future__ import annotations

import json
import sys

import click

from bmm_lab import DEFAULT_DIR

REAL_VS_EMULATED = """
\b
Real: network namespaces + veths (each node has its own address), OpenSSH as
each node's OS, ipmi_sim BMCs spoken to with `ipmitool -I lanplus -C 3`, LVM
metadata on loop devices, GRUB environment blocks (grub-editenv, grub-reboot).
Emulated: the firmware (the lab daemon boots what GRUB's rules pick:
next_entry once, else saved_entry; the home entry boots this host's userland
with the server's own /boot; an entry naming an LV boots that LV's
filesystem), LV activation without device-mapper (a loop device at the LV's
offset), and the guest's one-context package (CONTEXT iso -> ssh key,
hostname). `reboot`/`poweroff` inside a node only end that node.
"""

DIR_OPTION = click.option("--dir", "lab_dir", default=None, metavar="DIR", envvar="BMM_LAB_DIR",
                          help=f"The lab's directory (default {DEFAULT_DIR}; env BMM_LAB_DIR). One lab per dir.")


@click.group("lab", help="A simulated rack on this machine (root). Try `bmm lab demo` first.\n" + REAL_VS_EMULATED)
def cli():
    pass


def _say(msg: str) -> None:
    try:
        click.echo(msg)
        sys.stdout.flush()
    except OSError:          # stdout closed (`| head`): keep working, teardowns must finish
        pass


@cli.command("up", help="Build a lab and start it: servers (local-disk, IPMI, GRUB) and boards "
             "(netboot, PDU, TFTP). Prints one line per step; writes DIR/nodes.toml so every bmm "
             "command works against the lab.\n" + REAL_VS_EMULATED)
@DIR_OPTION
@click.option("--servers", default=2, show_default=True, help="Local-disk servers (0-49).")
@click.option("--boards", default=None, type=int, help="Netboot boards (0-99; default 2 when the board half is built, else 0).")
@click.option("--disk-size", default="4G", show_default=True, help="Each server's sparse disk (holds its VG).")
@click.option("--net", default=None, metavar="10.X.0.0/16",
              help="Address block (default 10.213.0.0/16, or the next free /16). Node n is 10.X.n.2, "
                   "reached from this host via 10.X.n.1.")
@click.option("--keep-on-failure", is_flag=True, help="Leave a failed lab in place for debugging.")
def up_cmd(lab_dir, servers, boards, disk_size, net, keep_on_failure):
    from bmm_lab import rack
    lab = rack.up(lab_dir, servers=servers, boards=boards, disk_size=disk_size, net=net, say=_say,
                  keep_on_failure=keep_on_failure)
    _say(f"lab {lab['id']} is up in {lab['dir']}: {len(lab['nodes'])} nodes; inventory {lab['dir']}/nodes.toml")
    _say(f"see `bmm lab status --dir {lab['dir']}`; tear down with `bmm lab down --dir {lab['dir']}`")


@cli.command("status", help="Every node with its power state and endpoints (ssh, BMC, PDU, ...).")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object: lab facts and `nodes`, one object per node.")
def status_cmd(lab_dir, as_json):
    from bmm_lab import rack
    st = rack.status(lab_dir)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"lab {st['id']} in {st['dir']}: {st['state']}, daemon "
               f"{'running (pid %s)' % st['daemon']['pid'] if st['daemon']['alive'] else 'not running'}, "
               f"net {st['net']}, LVM activation {'real' if st['dm'] else 'emulated (no device-mapper)'}")
    click.echo(f"inventory: {st['inventory']}")
    rows = [("NODE", "KIND", "POWER", "STATE", "SSH", "POWER CONTROL", "DETAIL")]
    for n in st["nodes"]:
        power = {True: "on", False: "off", None: "?"}[n["power"]]
        ssh = f"root@{n['ssh']['host']}:{n['ssh']['port']}"
        if "bmc" in n:
            ctl = f"ipmi {n['bmc']['host']}:{n['bmc']['port']} user {n['bmc']['user']}"
        elif "pdu" in n:
            p = n["pdu"]
            ctl = f"pdu {p.get('host')}:{p.get('port')} outlet {p.get('outlet')}"
        else:
            ctl = "-"
        rows.append((n["name"], n["kind"], power, n["state"], ssh, ctl, n.get("detail", "")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[-1]))
    click.echo("")
    for n in st["nodes"]:
        if "bmc" in n:
            click.echo(f"{n['name']}: vg {n['vg']}, boot dir {n['boot_dir']}, BMC password file "
                       f"{n['bmc']['password_file']}, console {n['console']}")
        else:
            extra = []
            if isinstance(n.get("pdu"), dict):
                extra.append(f"PDU {n['pdu'].get('protocol', 'telnet')} {n['pdu'].get('host')}:{n['pdu'].get('port')} "
                             f"user {n['pdu'].get('user')} password file {n['pdu'].get('password_file')}")
            if isinstance(n.get("tftp"), dict):
                extra.append(f"TFTP {n['tftp'].get('host')}:{n['tftp'].get('port')} root {n['tftp'].get('root')}")
            if n.get("nfs_export"):
                extra.append(f"NFS export {n['nfs_export']}")
            click.echo(f"{n['name']}: " + ", ".join(extra + [f"console {n.get('console')}"]))
    click.echo(f"ssh key: {st['dir']}/ssh/lab_key   known hosts: {st['known_hosts']}")


@cli.command("down", help="Stop every lab process and remove every loop device, VG, netns and veth "
             "the lab created (found by its id and DIR, so it also works after kill -9). Never "
             "touches anything another lab or the host owns.")
@DIR_OPTION
@click.option("--purge", is_flag=True, help="Also delete DIR (logs, keys, inventory).")
def down_cmd(lab_dir, purge):
    from bmm_lab import rack
    rep = rack.down(lab_dir, say=_say, purge=purge)
    _say(f"lab {rep['id'] or '?'} is down: {rep['processes']} processes stopped, {rep['loops']} loop "
         f"devices detached, {rep['netns']} netns and {rep['links']} links removed")


@cli.command("demo", help="""The main job, end to end: an OpenNebula instance on bare metal
through bmm's installed remotes. A lab comes up; then, in timed steps, for a server (and a
netboot board with --board): register the host; create a VM, with the image copy's progress;
RUNNING; ssh into the tenant with the key from CONTEXT (it shows the CONTEXT hostname);
poweroff and resume (a file the tenant wrote survives); terminate; the disk shown wiped (the
server's LV extents read as zeros, the board's NFS root gone). Then the lab is torn down.
The server alone takes about a minute.

\b
Without an OpenNebula, the demo says so and uses bmm's emulation of oned's exec drivers
(bmm_lab.oneemu): the remotes get the argv, base64 stdin and bare environment oned gives them,
in oned's order (TM clone; TM context + VMM deploy; VMM shutdown; TM context + VMM deploy;
VMM shutdown, TM delete per disk and of the VM directory).

\b
With one (--one URL or ONE_XMLRPC; credentials in ONE_AUTH or ~/.one/one_auth, as the
`one*` commands find them), the same job goes through pyone: `bmm one register`, an image,
`onetemplate instantiate`, `onevm deploy/poweroff/resume/terminate`. oned must run on this
machine with bmm installed, and its bmm.toml must read the inventory of the lab the demo
brings up in D: set `inventory = "D/nodes.toml"` in <remotes>/etc/bmm/bmm.toml, then
  bmm lab demo --dir D --one http://localhost:2633/RPC2
The demo deletes the hosts and the image it made; datastores and templates stay.

\b
Examples:
  bmm lab demo                      # a server, emulated oned
  bmm lab demo --board              # a server and a netboot board
  bmm lab demo --keep               # leave the lab up afterwards
""" + REAL_VS_EMULATED)
@DIR_OPTION
@click.option("--servers", default=1, show_default=True, help="Lab servers; the job runs on the first (0: boards only).")
@click.option("--boards", default=0, show_default=True, help="Lab boards; with any, the job runs on the first too.")
@click.option("--board", is_flag=True, help="Also run the job on a netboot board (the lab gets one if --boards is 0).")
@click.option("--one", "one_url", metavar="URL", envvar="ONE_XMLRPC",
              help="oned's XML-RPC endpoint: run the job through a real OpenNebula [env ONE_XMLRPC].")
@click.option("--one-auth", "one_auth", metavar="FILE", envvar="ONE_AUTH",
              help="File holding user:password for oned [env ONE_AUTH; default ~/.one/one_auth].")
@click.option("--keep", is_flag=True, help="Leave the lab up at the end.")
def demo_cmd(lab_dir, servers, boards, board, one_url, one_auth, keep):
    from bmm_lab import demo
    demo.run(lab_dir, servers=servers, boards=boards, board=board, keep=keep, one_url=one_url, one_auth=one_auth,
             say=_say)
