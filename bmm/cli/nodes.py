"""`bmm nodes`: the inventory and the nodes' states."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from bmm.errors import BmmError, ConfigError
from bmm.inventory import Inventory, Node, inventory_path, load_inventory, thaw, validate_inventory
from bmm.state import MAINTENANCE, STABLE, StateStore, open_store

POWER_WORKERS = 8

# exit codes of import-tilera
IMPORT_OK, IMPORT_PARTIAL, IMPORT_NOTHING = 0, 1, 2


def inventory_option(f):
    return click.option(
        "--inventory", "inventory", metavar="FILE", envvar="BMM_INVENTORY",
        type=click.Path(dir_okay=False),
        help="Inventory file [env BMM_INVENTORY; default: bmm.toml `inventory`, "
             "else /etc/one/bmm/nodes.toml].")(f)


def state_db_option(f):
    return click.option(
        "--state-db", "state_db", metavar="FILE", envvar="BMM_STATE_DB",
        type=click.Path(dir_okay=False),
        help="State database [env BMM_STATE_DB; default: bmm.toml `state_db`, "
             "else /var/lib/one/bmm/state.db].")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _load(inventory: str | None) -> Inventory:
    """The inventory with its good nodes; broken nodes are announced on stderr."""
    inv = load_inventory(inventory_path(inventory), strict=False)
    if inv.problems:
        broken = sorted({p.node for p in inv.problems if p.node})
        if any(p.node is None for p in inv.problems):
            raise ConfigError(f"inventory {next(p for p in inv.problems if p.node is None)} "
                              "(run `bmm nodes validate`)")
        click.echo(f"bmm: warning: {inv.path}: left out nodes with problems: {', '.join(broken)} "
                   "(run `bmm nodes validate`)", err=True)
    return inv


# --------------------------------------------------------------------------- power queries

def query_power(nodes: list[Node], timeout: float) -> dict[str, tuple[str, str | None]]:
    """{name: (power state, error)} for every node, within `timeout` seconds overall.

    Queries run concurrently in daemon threads, so a hung BMC never holds the command: what
    has not answered by the deadline is "unknown"."""
    results: dict[str, tuple[str, str | None]] = {n.name: ("unknown", "no answer in time") for n in nodes}
    if not nodes:
        return results
    try:
        from bmm.power import power_for
    except ImportError as exc:
        return {n.name: ("unknown", f"power package unavailable ({exc})") for n in nodes}

    lock = threading.Lock()
    pending = list(nodes)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                node = pending.pop(0)
            try:
                state = str(power_for(node).status())
                answer = (state if state in ("on", "off") else "unknown", None)
            except Exception as exc:  # any failure is "unknown", the reason is kept for show
                answer = ("unknown", str(exc) or type(exc).__name__)
            with lock:
                results[node.name] = answer

    threads = [threading.Thread(target=worker, daemon=True, name="bmm-power-query")
               for _ in range(min(POWER_WORKERS, len(nodes)))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + max(0.0, timeout)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return dict(results)


def _power_options(f):
    f = click.option("--power-timeout", type=float, default=10.0, show_default=True, metavar="S",
                     help="Overall deadline for power queries; slower answers show as unknown.")(f)
    f = click.option("--power/--no-power", "with_power", default=True, show_default=True,
                     help="Ask each node's BMC/PDU for its power state.")(f)
    return f


# --------------------------------------------------------------------------- the group

@click.group("nodes")
def cli():
    """The node inventory and the nodes' states.

    \b
    Examples:
      bmm nodes validate --inventory /etc/one/bmm/nodes.toml
      bmm nodes list
      bmm nodes list --json --no-power
      bmm nodes show node01
      bmm nodes inspect --all
      bmm nodes import-tilera /tftpboot/tilera_boards -o /etc/one/bmm/nodes.toml
      bmm nodes maintenance on node01 --reason "replacing a DIMM"
      bmm nodes recover
    """


@cli.command()
@inventory_option
def validate(inventory):
    """Check the inventory; print every problem as `file: node: field: problem`.

    Exit status 0 and "N nodes OK" when the file is good, 1 when it has problems.

    \b
    Example:
      bmm nodes validate --inventory nodes.toml
    """
    path = inventory_path(inventory)
    problems = validate_inventory(path)
    if problems:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {path}", err=True)
        sys.exit(1)
    count = len(load_inventory(path))
    click.echo(f"{count} node{'s' if count != 1 else ''} OK ({path})")


def _state_text(rec) -> str:
    text = rec.state
    if rec.interrupted:
        text += " (interrupted)"
    return text


@cli.command("list")
@inventory_option
@state_db_option
@json_option
@_power_options
def list_(inventory, state_db, as_json, with_power, power_timeout):
    """List the nodes with their state and power.

    State comes from the state database without waiting for any lock; power is asked of
    every BMC/PDU concurrently, bounded by --power-timeout (unknown when it cannot tell).
    --json prints a list of objects with name, kind, state, power, vm_id and more.

    \b
    Examples:
      bmm nodes list
      bmm nodes list --json --no-power | jq '.[] | select(.state == "error")'
    """
    inv = _load(inventory)
    store = open_store(state_db)
    nodes = list(inv)
    power = query_power(nodes, power_timeout) if with_power else {}
    rows = []
    for node in nodes:
        rec = store.get(node.name)
        holder = store.holder(node.name)
        rows.append({
            "name": node.name, "kind": node.kind, "state": rec.state,
            "power": power.get(node.name, ("unknown", None))[0],
            "vm_id": rec.vm_id, "interrupted": rec.interrupted, "last_error": rec.last_error,
            "maintenance_reason": rec.maintenance_reason, "updated_at": rec.updated_at,
            "locked_by": holder.describe() if holder else None,
            "arch": node.arch, "model": node.model, "cpus": node.cpus,
            "memory_mb": node.memory_mb, "disk_gb": node.disk_gb, "ip": node.ip,
            "macs": list(node.macs), "power_driver": node.power.driver, "boot": node.boot.method if node.boot else None,
            "_state_text": _state_text(rec),
        })
    if as_json:
        _emit_json([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        return
    header = ("NAME", "KIND", "STATE", "POWER", "VM", "ARCH", "CPUS", "MEM_MB", "IP")
    table = [header] + [(r["name"], r["kind"], r["_state_text"], r["power"],
                         "-" if r["vm_id"] is None else str(r["vm_id"]), r["arch"],
                         str(r["cpus"]), str(r["memory_mb"]), r["ip"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _history_dicts(store: StateStore, name: str, limit: int) -> list[dict]:
    return [{"at": h.at, "from": h.from_state, "to": h.to_state, "vm_id": h.vm_id,
             "reason": h.reason, "pid": h.pid} for h in store.history(name, limit)]


def _echo_history(history: list[dict]) -> None:
    if history:
        click.echo("  history:")
        for h in history:
            vm = f"  vm {h['vm_id']}" if h["vm_id"] is not None else ""
            why = f"  ({h['reason']})" if h["reason"] else ""
            click.echo(f"    {h['at']}  {h['from']} -> {h['to']}{vm}{why}")


def _echo_state(rec, holder, history) -> None:
    line = f"  state:      {_state_text(rec)}"
    if rec.vm_id is not None:
        line += f"  vm {rec.vm_id}"
    if rec.updated_at:
        line += f"  since {rec.updated_at}"
    click.echo(line)
    if rec.transient and rec.owner_pid:
        click.echo(f"  owner:      {rec.owner_action} (pid {rec.owner_pid}) since {rec.owner_since}")
    if rec.state == MAINTENANCE:
        click.echo(f"  maintenance: {rec.maintenance_reason or '-'} (was {rec.previous_state})")
    if rec.last_error:
        click.echo(f"  last error: {rec.last_error}")
    click.echo(f"  locked by:  {holder.describe() if holder else '-'}")
    _echo_history(history)


@cli.command()
@click.argument("name")
@inventory_option
@state_db_option
@json_option
@_power_options
@click.option("--history", "history_len", type=int, default=10, show_default=True, metavar="N",
              help="How many past transitions to show.")
def show(name, inventory, state_db, as_json, with_power, power_timeout, history_len):
    """Show one node: inventory facts, state, lock holder, power and recent history.

    \b
    Example:
      bmm nodes show node01 --json
    """
    node = _load(inventory).get(name)
    store = open_store(state_db)
    rec = store.get(name)
    holder = store.holder(name)
    history = _history_dicts(store, name, history_len)
    power, power_error = ("unknown", None)
    if with_power:
        power, power_error = query_power([node], power_timeout)[name]
    if as_json:
        data = node.to_dict()
        data["power_settings"] = data.pop("power")
        data.update({"state": rec.state, "power": power, "power_error": power_error,
                     "vm_id": rec.vm_id, "interrupted": rec.interrupted,
                     "last_error": rec.last_error, "updated_at": rec.updated_at,
                     "owner": ({"pid": rec.owner_pid, "action": rec.owner_action,
                                "since": rec.owner_since} if rec.transient else None),
                     "maintenance_reason": rec.maintenance_reason,
                     "locked_by": holder.describe() if holder else None,
                     "history": history,
                     "inspection": _inspection_dict(store, node)})
        _emit_json(data)
        return
    click.echo(f"{node.name}  ({node.kind}, {node.arch}{', ' + node.model if node.model else ''})")
    _echo_state(rec, holder, [])
    click.echo(f"  power:      {power} (driver {node.power.driver})"
               + (f"  [{power_error}]" if power_error and with_power else ""))
    disk = f", disk {node.disk_gb} GB" if node.disk_gb else ""
    click.echo(f"  capacity:   {node.cpus} cpus, {node.memory_mb} MB{disk}")
    click.echo(f"  macs:       {', '.join(node.macs)}")
    click.echo(f"  ip:         {node.ip or '-'}")
    if node.ssh.address:
        click.echo(f"  ssh:        {node.ssh.user}@{node.ssh.address}:{node.ssh.port}")
    if node.boot is not None:
        boot = " ".join(f"{k}={v}" for k, v in node.boot.settings.items() if k != "method")
        click.echo(f"  boot:       {node.boot.method}{'  ' + boot if boot else ''}")
    if node.storage.settings:
        click.echo("  storage:    " + " ".join(f"{k}={v}" for k, v in node.storage.settings.items()))
    if node.hardware:
        click.echo("  hardware:")
        for key, value in thaw(node.hardware).items():
            click.echo(f"    {key} = {json.dumps(value, default=str)}")
    _echo_inspection(store, node)
    _echo_history(history)


@cli.command()
@click.argument("name")
@inventory_option
@state_db_option
@json_option
@click.option("--history", "history_len", type=int, default=20, show_default=True, metavar="N",
              help="How many past transitions to show.")
def state(name, inventory, state_db, as_json, history_len):
    """Show a node's state record, lock holder and history (no power query, no lock).

    \b
    Example:
      bmm nodes state node01
    """
    _warn_unknown(name, inventory)
    store = open_store(state_db)
    rec = store.get(name)
    holder = store.holder(name)
    history = _history_dicts(store, name, history_len)
    if as_json:
        data = rec.to_dict()
        data["locked_by"] = holder.describe() if holder else None
        data["history"] = history
        _emit_json(data)
        return
    click.echo(name)
    _echo_state(rec, holder, history)


def _warn_unknown(name: str, inventory: str | None) -> bool:
    try:
        inv = load_inventory(inventory_path(inventory), strict=False)
    except BmmError as exc:
        click.echo(f"bmm: warning: {exc}", err=True)
        return False
    if name not in inv.nodes and not any(p.node == name for p in inv.problems):
        click.echo(f"bmm: warning: node {name} is not in the inventory {inv.path}", err=True)
        return False
    return True


@cli.command()
@inventory_option
@state_db_option
def recover(inventory, state_db):
    """Fail nodes whose action died: a transient state (deploying, stopping, deleting,
    cleaning) whose owner process is gone goes to `error`, "interrupted while <state>".

    Nodes whose action still runs (a live process holds the lock) are left alone. The bmm
    monitor daemon does the same on start-up.

    \b
    Example:
      bmm nodes recover
    """
    moved = open_store(state_db).recover()
    for name, old in moved:
        click.echo(f"{name}: {old} -> error (interrupted while {old})")
    if not moved:
        click.echo("no interrupted nodes")


@cli.command()
@click.argument("mode", type=click.Choice(["on", "off"]))
@click.argument("name")
@click.option("--reason", default=None, help="Why (recorded in the node's history).")
@click.option("--to", "to", type=click.Choice(sorted(s.value for s in STABLE - {MAINTENANCE})), default=None,
              help="Leaving maintenance: the state to return to (default: the state it had). "
                   "`available` drops the instance the node held: only once it is clean.")
@click.option("--wait", type=float, default=None, metavar="S",
              help="How long to wait for the node's lock (default: bmm.toml lock_wait_s).")
@inventory_option
@state_db_option
def maintenance(mode, name, reason, to, wait, inventory, state_db):
    """Put a node in maintenance or take it out.

    A node in maintenance takes no action. It enters from available, active, off or error.

    \b
    Examples:
      bmm nodes maintenance on node01 --reason "replacing a DIMM"
      bmm nodes maintenance off node01
      bmm nodes maintenance off node01 --to available --reason "disk wiped by hand"
    """
    _load(inventory).get(name)  # a typo in the name must not create a phantom node
    if mode == "on" and not reason:
        raise click.UsageError("maintenance on needs --reason")
    rec = open_store(state_db).set_maintenance(name, mode == "on", reason, to=to, wait=wait)
    click.echo(f"{name}: {rec.state}" + (f" ({rec.maintenance_reason})" if rec.maintenance_reason else ""))


@cli.command("import-tilera")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", metavar="OUT", type=click.Path(dir_okay=False),
              help="Write the TOML here instead of stdout.")
@click.option("--prefix", default="tilera-", show_default=True,
              help="Node name prefix: board 3 becomes <prefix>3 (use the OpenNebula host names).")
@click.option("--strict", is_flag=True,
              help="Treat a cut-off cpu_info (as printed in the blueprint) as an error instead "
                   "of closing it.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@inventory_option
def import_tilera(file, output, prefix, strict, force, inventory):
    """Convert a legacy nova-baremetal `tilera_boards` file into inventory TOML.

    Reads rows with or without the ip column, `#` comments, backslash continuations and a
    cpu_info JSON that spans lines. Bad rows are reported on stderr with their line number
    and skipped; the good rows are still written. Boards become netboot nodes with boot
    method nfsroot and power driver "manual": fill in each board's PDU outlet where the
    output says FILL IN, then run `bmm nodes validate`.

    Node names that already exist in --inventory are reported.

    \b
    Exit status:
      0  every row imported (warnings may have been printed)
      1  some rows were skipped; the good rows were written
      2  nothing imported (unreadable file or no good row); nothing written

    \b
    Examples:
      bmm nodes import-tilera /tftpboot/tilera_boards > nodes.toml
      bmm nodes import-tilera tilera_boards --prefix tile -o /etc/one/bmm/nodes.toml
    """
    from bmm.tilera import import_tilera as convert

    label = "<stdin>" if file == "-" else file
    try:
        if file == "-":
            text = sys.stdin.read()
        else:
            text = Path(file).read_text(errors="replace")
    except OSError as exc:
        click.echo(f"bmm: cannot read {file}: {exc.strerror}", err=True)
        sys.exit(IMPORT_NOTHING)
    if output and Path(output).exists() and not force:
        click.echo(f"bmm: {output} exists; use --force to overwrite it", err=True)
        sys.exit(IMPORT_NOTHING)

    toml_text, result = convert(text, prefix=prefix, source=os.path.basename(label), strict=strict)
    for w in result.warnings:
        board = f"board {w.board}: " if w.board is not None else ""
        click.echo(f"{label}: line {w.line}: {board}warning: {w.text}", err=True)
    for e in result.errors:
        click.echo(f"{label}: {e}", err=True)
    _report_collisions(inventory, [f"{prefix}{b.board_id}" for b in result.boards])

    if not result.boards:
        click.echo(f"bmm: no board imported from {label}"
                   + (f" ({len(result.errors)} bad rows)" if result.errors else " (no board rows)"),
                   err=True)
        sys.exit(IMPORT_NOTHING)
    if output:
        _write_atomically(Path(output), toml_text)
    else:
        click.echo(toml_text, nl=False)
    summary = f"{len(result.boards)} boards imported"
    if result.errors:
        summary += f", {len(result.errors)} rows skipped"
    if output:
        summary += f" to {output}"
    click.echo(f"bmm: {summary}", err=True)
    sys.exit(IMPORT_PARTIAL if result.errors else IMPORT_OK)


def _report_collisions(inventory: str | None, names: list[str]) -> None:
    try:
        path = inventory_path(inventory)
    except BmmError:
        return
    if not path.exists():
        return
    try:
        inv = load_inventory(path, strict=False)
    except BmmError:
        return
    existing = set(inv.nodes) | {p.node for p in inv.problems if p.node}
    clash = [n for n in names if n in existing]
    if clash:
        click.echo(f"bmm: warning: already in {path}: {', '.join(clash)} (merge by hand)", err=True)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------- inspection

def _inspected(store: StateStore, node: Node):
    """(record, facts, mismatches against the inventory as it is now) or (record, None, [])."""
    from bmm.inspect.diff import mismatches
    from bmm.inspect.facts import Facts

    record = store.inspection(node.name)
    if record is None or not record.facts:
        return record, None, []
    facts = Facts.from_dict(record.facts)
    return record, facts, mismatches(node, facts)


def _inspection_dict(store: StateStore, node: Node) -> dict | None:
    record, facts, found = _inspected(store, node)
    if record is None:
        return None
    data = record.to_dict()
    data["mismatches_at_inspection"] = data.pop("mismatches")
    data["mismatches"] = [m.text for m in found]
    data["summary"] = facts.summary() if facts else None
    return data


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _facts_lines(facts) -> list[tuple[str, str]]:
    c = facts.cpu
    cpu = ", ".join(p for p in (c.model, c.arch, c.sockets and _count(c.sockets, "socket"),
                                c.cores and _count(c.cores, "core"), c.threads and _count(c.threads, "thread"),
                                c.mhz and f"{c.mhz:.0f} MHz") if p)
    summary = facts.summary()
    lines = [("cpu", cpu or "-"), ("memory", f"{facts.memory_mb} MB" if facts.memory_mb is not None else "-"),
             ("disks", ", ".join(summary["disks"]) or "-"),
             ("nics", ", ".join(f"{n.name} {n.mac} {n.state or '?'}" for n in facts.nics) or "-")]
    for key in ("fpga", "gpu", "accelerators"):
        if summary[key]:
            lines.append((key, "; ".join(summary[key])))
    if facts.firmware:
        lines.append(("firmware", " ".join(f"{k}={v}" for k, v in sorted(facts.firmware.items()))))
    if facts.bmc:
        lines.append(("bmc", " ".join(f"{k}={v}" for k, v in sorted(facts.bmc.items()))))
    return lines


def _echo_inspection(store: StateStore, node: Node) -> None:
    record, facts, found = _inspected(store, node)
    if record is None:
        click.echo(f"  inspection: never (run `bmm nodes inspect {node.name}`)")
        return
    if facts is None:
        click.echo(f"  inspection: none succeeded; last attempt {record.attempted_at}: {record.last_error}")
        return
    click.echo(f"  inspection: {record.inspected_at}  ({'MISMATCH' if found else 'matches the inventory'})")
    for key, text in _facts_lines(facts):
        click.echo(f"    {key + ':':<10} {text}")
    for m in found:
        click.echo(f"    mismatch:  {m.text}")
    if record.last_error:
        click.echo(f"    last attempt {record.attempted_at} failed: {record.last_error}")


def _outcome_line(outcome) -> str:
    facts = outcome.facts
    c = facts.cpu
    parts = [f"{c.model or 'cpu ?'} x{c.threads or '?'}", f"{facts.memory_mb or '?'} MB",
             _count(len(facts.disks), "disk"), _count(len(facts.nics), "nic")]
    summary = facts.summary()
    parts += [f"{key} {', '.join(summary[key])}" for key in ("fpga", "gpu", "accelerators") if summary[key]]
    verdict = ("MISMATCH: " + "; ".join(m.text for m in outcome.mismatches)) if outcome.mismatches \
        else "matches the inventory"
    return f"{outcome.name}: {'; '.join(parts)}; {verdict} ({outcome.seconds:.1f} s)"


@cli.command("inspect")
@click.argument("names", nargs=-1)
@click.option("--all", "all_nodes", is_flag=True, help="Inspect every node of the inventory.")
@inventory_option
@state_db_option
@json_option
@click.option("--timeout", type=float, default=60.0, show_default=True, metavar="S",
              help="Overall deadline; a node that has not answered by then fails alone.")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="How many nodes are inspected at once.")
def inspect_(names, all_nodes, inventory, state_db, as_json, timeout, workers):
    """Read each node's hardware from its own OS and compare it with the inventory.

    Logs in to the home OS (local-disk servers) or the booted OS (netboot boards) with the
    node's [ssh] settings and reads CPU, memory, disks, NICs, PCI devices (FPGAs, GPUs),
    firmware and BMC facts with standard tools or /proc and /sys. Only available nodes and
    nodes in maintenance are inspected (never a tenant's OS). The result goes to the state
    database; a mismatch with the inventory (MACs, memory, CPUs, FPGA/GPU) is printed, shown
    by `bmm nodes show` and reported to OpenNebula as BMM_INSPECTION_MISMATCH. Capacity is
    never changed: the inventory's stays.

    Exit status 0 when every node was inspected (mismatches included), 1 when one failed.

    \b
    Examples:
      bmm nodes inspect node01 node02
      bmm nodes inspect --all --json | jq '.[] | select(.inspection == "MISMATCH")'
    """
    from bmm.inspect.run import inspect_nodes

    if bool(names) == all_nodes:
        raise click.UsageError("name the nodes to inspect, or give --all")
    inv = _load(inventory)
    nodes = list(inv) if all_nodes else [inv.get(name) for name in dict.fromkeys(names)]
    outcomes = inspect_nodes(nodes, open_store(state_db), timeout=timeout, workers=workers)
    if as_json:
        _emit_json([{"name": o.name, "ok": o.ok, "error": o.error, "seconds": round(o.seconds, 2),
                     "inspected_at": o.inspected_at,
                     "inspection": None if not o.ok else ("MISMATCH" if o.mismatches else "OK"),
                     "mismatches": [m.text for m in o.mismatches],
                     "summary": o.facts.summary() if o.facts else None} for o in outcomes])
    else:
        for o in outcomes:
            if o.ok:
                click.echo(_outcome_line(o))
    for o in outcomes:
        if not o.ok:
            click.echo(f"bmm: {o.error}", err=True)
    if not all(o.ok for o in outcomes):
        sys.exit(1)
