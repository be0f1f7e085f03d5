"""The inventory: loading, validation problems, path resolution, and the `bmm nodes` commands."""

import dataclasses
import json
import os
import re
import threading
import time

import pytest
from click.testing import CliRunner

import bmm.config as config
import bmm.inventory as inventory
from bmm.cli import main
from bmm.errors import ConfigError
from bmm.inventory import Problem, inventory_path, load_inventory, load_node, validate_inventory
from bmm.state import StateStore
from tests.support import REPO

GOOD = """\
[nodes.node01]
kind      = "localdisk"
arch      = "x86_64"
model     = "Convey HC-2ex"
cpus      = 16
memory_mb = 65536
disk_gb   = 500
macs      = ["52:54:00:00:01:01", "52:54:00:00:01:02"]
ip        = "10.0.0.11"

[nodes.node01.ssh]
port = 2222
key  = "/var/lib/one/.ssh/id_ed25519"

[nodes.node01.power]
driver        = "ipmi"
host          = "10.0.1.11"
user          = "admin"
password_file = "/etc/one/bmm/secrets/node01.bmc"

[nodes.node01.boot]
method   = "grub"
boot_dir = "/boot"

[nodes.node01.storage]
vg = "bmmvg"

[nodes.node01.hardware]
fpga = "Xilinx Virtex-5 LX330 x4"
accelerators = ["Convey HC-2ex coprocessor"]

[nodes.board1]
kind      = "netboot"
arch      = "tilepro64"
cpus      = 64
memory_mb = 16384
macs      = ["00:1A:CA:00:57:90"]

[nodes.board1.power]
driver = "manual"

[nodes.board1.boot]
method = "tftp2stage"
board  = 1
"""


@pytest.fixture
def inv_file(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_text(GOOD)
    return path


def write(tmp_path, text):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path, text):
    return [(p.node, p.field, p.message) for p in validate_inventory(write(tmp_path, text))]


def test_good_inventory_loads_into_read_only_nodes(inv_file):
    assert validate_inventory(inv_file) == []
    inv = load_inventory(inv_file)
    assert inv.names() == ["node01", "board1"] and len(inv) == 2 and "node01" in inv
    n = inv.get("node01")
    assert (n.kind, n.arch, n.model, n.cpus, n.memory_mb, n.disk_gb) == (
        "localdisk", "x86_64", "Convey HC-2ex", 16, 65536, 500)
    assert n.macs == ("52:54:00:00:01:01", "52:54:00:00:01:02") and n.ip == "10.0.0.11"
    assert n.power.driver == "ipmi" and n.power.settings["host"] == "10.0.1.11"
    assert n.boot.method == "grub" and n.boot.get("boot_dir") == "/boot"
    assert n.storage.vg == "bmmvg"
    assert n.hardware["fpga"].startswith("Xilinx") and n.hardware["accelerators"] == ("Convey HC-2ex coprocessor",)
    target = n.ssh.target(n.name)
    assert (target.host, target.port, target.user, target.key_file, target.node) == (
        "10.0.0.11", 2222, "root", "/var/lib/one/.ssh/id_ed25519", "node01")
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.cpus = 1
    with pytest.raises(TypeError):
        n.power.settings["host"] = "x"
    b = inv.get("board1")
    assert b.macs == ("00:1a:ca:00:57:90",)  # lower case, as OpenNebula writes MACs
    assert b.ssh.address is None and b.disk_gb is None and b.storage.vg is None
    with pytest.raises(ConfigError, match="no ssh address"):
        b.ssh.target("board1")
    assert json.dumps(n.to_dict())  # plain data


def test_the_documented_example_is_valid(tmp_path):
    with open(os.path.join(REPO, "docs", "inventory.md")) as f:
        doc = f.read()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        path = write(tmp_path, block)
        assert validate_inventory(path) == [], block[:80]


def test_typos_in_keys_are_errors_with_a_suggestion(tmp_path):
    text = (GOOD.replace("memory_mb = 65536", "memroy_mb = 65536")
                .replace("port = 2222", "prot = 2222")
                .replace('boot_dir = "/boot"', 'boot_dri = "/boot"')
                .replace('vg = "bmmvg"', 'vg = "bmmvg"\nlv_prefx = "one"')
                .replace("[nodes.board1.power]", "[nodes.board1.powr]\ndriver = \"manual\"\n[nodes.board1.power]"))
    found = problems_of(tmp_path, text + '\n[node.x]\nkind = "netboot"\n')
    assert ("node01", "memroy_mb", "unknown key (did you mean 'memory_mb'?)") in found
    assert ("node01", "memory_mb", "missing (required)") in found
    assert ("node01", "ssh.prot", "unknown key (did you mean 'port'?)") in found
    assert ("node01", "boot.boot_dri", "unknown key (did you mean 'boot_dir'?)") in found
    assert ("node01", "storage.lv_prefx", "unknown key (did you mean 'lv_prefix'?)") in found
    assert ("board1", "powr", "unknown key (did you mean 'power'?)") in found
    assert (None, "node", "unknown top-level key (did you mean 'nodes'?)") in found


def test_power_settings_are_checked_by_the_power_package(tmp_path):
    text = GOOD.replace('user          = "admin"', 'usr           = "admin"')
    found = problems_of(tmp_path, text.replace('driver = "manual"', 'driver = "redfish"'))
    assert any(n == "node01" and f == "power.usr" for n, f, _ in found)
    assert any(n == "node01" and f == "power.user" for n, f, _ in found)
    assert any(n == "board1" and f == "power.driver" and "redfish" in m for n, f, m in found)


@pytest.mark.parametrize("key", ["password", "bmc_password"])
def test_a_literal_password_is_refused_once(tmp_path, key):
    text = GOOD.replace('password_file = "/etc/one/bmm/secrets/node01.bmc"',
                        f'password_file = "/etc/one/bmm/secrets/node01.bmc"\n{key} = "hunter2"')
    found = problems_of(tmp_path, text)
    assert found == [("node01", f"power.{key}", inventory.SECRET_MESSAGE)]
    assert "secrets only by password_file" in inventory.SECRET_MESSAGE
    messages = " ".join(str(p) for p in validate_inventory(tmp_path / "nodes.toml"))
    assert "hunter2" not in messages


def test_values_are_checked(tmp_path):
    text = (GOOD.replace('"52:54:00:00:01:02"', '"52:54:00:00:01"')
                .replace('ip        = "10.0.0.11"', 'ip        = "10.0.0.311"')
                .replace("cpus      = 16", "cpus      = -4")
                .replace("memory_mb = 16384", "memory_mb = 0")
                .replace("cpus      = 64", "cpus      = true")
                .replace('method   = "grub"', 'method   = "nfsroot"')
                .replace('method = "tftp2stage"', 'method = "grub"')
                .replace("port = 2222", "port = 70000")
                .replace('vg = "bmmvg"', 'vg = "bad vg"'))
    found = {(n, f): m for n, f, m in problems_of(tmp_path, text)}
    assert "not a MAC address" in found[("node01", "macs[1]")]
    assert "not an IP address" in found[("node01", "ip")]
    assert found[("node01", "cpus")] == "must be a positive integer, not -4"
    assert found[("board1", "memory_mb")] == "must be a positive integer, not 0"
    assert found[("board1", "cpus")] == "must be a positive integer, not a boolean"
    assert found[("node01", "boot.method")] == "'nfsroot' does not fit kind 'localdisk' (localdisk boots by grub)"
    assert "does not fit kind 'netboot'" in found[("board1", "boot.method")]
    assert "port (1-65535)" in found[("node01", "ssh.port")]
    assert "LVM name" in found[("node01", "storage.vg")]


def test_kind_specific_requirements(tmp_path):
    text = GOOD.replace('[nodes.node01.storage]\nvg = "bmmvg"\n', "").replace('ip        = "10.0.0.11"\n', "")
    text = text.replace("disk_gb   = 500\n", "")
    text += '\n[nodes.board1.storage]\nvg = "x"\n'
    found = {(n, f) for n, f, _ in problems_of(tmp_path, text)}
    assert found == {("node01", "storage.vg"), ("node01", "ssh.address"), ("node01", "disk_gb"),
                     ("board1", "storage")}


def test_a_mac_or_ip_belongs_to_one_node(tmp_path):
    text = GOOD.replace('macs      = ["00:1A:CA:00:57:90"]', 'macs      = ["52:54:00:00:01:01"]\nip = "10.0.0.11"')
    found = problems_of(tmp_path, text)
    assert ("board1", "macs[0]", "52:54:00:00:01:01 is also the MAC of node node01") in found
    assert ("board1", "ip", "10.0.0.11 is also the IP of node node01") in found


def test_all_problems_are_collected_with_file_node_and_field(tmp_path):
    text = GOOD.replace("cpus      = 16", 'cpus = "x"').replace('kind      = "netboot"', 'kind = "vm"')
    text = text.replace('arch      = "x86_64"\n', "")
    path = write(tmp_path, text)
    problems = validate_inventory(path)
    assert len(problems) >= 3
    assert all(p.file == str(path) for p in problems)
    assert str(Problem(str(path), "node01", "cpus", "must be a positive integer, not a string")) in map(str, problems)
    assert f"{path}: node01: arch: missing (required)" in map(str, problems)
    assert any(str(p).startswith(f"{path}: board1: kind: 'vm' is not one of") for p in problems)


def test_file_level_problems(tmp_path):
    assert [str(p) for p in validate_inventory(tmp_path / "none.toml")] == [f"{tmp_path / 'none.toml'}: file does not exist"]
    (problem,) = validate_inventory(write(tmp_path, "[nodes.a\nkind = 1\n"))
    assert "not valid TOML" in problem.message and "line 1" in problem.message
    (problem,) = validate_inventory(write(tmp_path, "nodes = 3\n"))
    assert problem.field == "nodes"
    assert validate_inventory(write(tmp_path, "")) == []


def test_load_raises_the_first_problem_and_load_node_tolerates_other_broken_nodes(tmp_path):
    path = write(tmp_path, GOOD.replace("cpus      = 64", "cpus = 0"))
    with pytest.raises(ConfigError, match=r"board1: cpus: must be a positive integer"):
        load_inventory(path)
    assert load_node("node01", path).name == "node01"
    with pytest.raises(ConfigError, match=r"board1: cpus"):
        load_node("board1", path)
    with pytest.raises(ConfigError, match="node nodeX is not in the inventory"):
        load_node("nodeX", path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_inventory(tmp_path / "missing.toml")


def test_inventory_path_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("BMM_INVENTORY", raising=False)
    monkeypatch.delenv("BMM_CONFIG", raising=False)
    monkeypatch.setattr("bmm.config.SYSTEM_CONFIG", tmp_path / "absent.toml")
    assert inventory_path() == config.DEFAULT_INVENTORY
    cfg = tmp_path / "bmm.toml"
    cfg.write_text('inventory = "inv.toml"\n')
    monkeypatch.setenv("BMM_CONFIG", str(cfg))
    assert inventory_path() == tmp_path / "inv.toml"
    monkeypatch.setenv("BMM_INVENTORY", "/env/nodes.toml")
    assert str(inventory_path()) == "/env/nodes.toml"
    assert str(inventory_path("/cli/nodes.toml")) == "/cli/nodes.toml"


# ---------------------------------------------------------------------- the commands

@pytest.fixture
def env(tmp_path, inv_file, monkeypatch):
    db = tmp_path / "state.db"
    monkeypatch.setenv("BMM_INVENTORY", str(inv_file))
    monkeypatch.setenv("BMM_STATE_DB", str(db))
    monkeypatch.delenv("BMM_CONFIG", raising=False)
    return StateStore(db)


def run(*args):
    return CliRunner().invoke(main, ["nodes", *args])


def test_cli_validate(tmp_path, inv_file):
    ok = run("validate", "--inventory", str(inv_file))
    assert ok.exit_code == 0 and ok.stdout.strip() == f"2 nodes OK ({inv_file})"
    bad = write(tmp_path, GOOD.replace("memory_mb = 65536", "memroy_mb = 65536"))
    result = run("validate", "--inventory", str(bad))
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert f"{bad}: node01: memroy_mb: unknown key (did you mean 'memory_mb'?)" in lines
    assert f"{bad}: node01: memory_mb: missing (required)" in lines
    assert lines[-1] == f"2 problems in {bad}"


def test_cli_list_json_joins_inventory_state_and_power(env):
    env.transition("node01", "deploying", vm_id=42)
    env.transition("node01", "active")
    result = run("list", "--json", "--power-timeout", "3")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["node01", "board1"]
    for r in rows:
        assert {"name", "kind", "state", "power"} <= set(r)
        assert r["power"] in ("on", "off", "unknown")
    assert rows[0]["state"] == "active" and rows[0]["vm_id"] == 42 and rows[0]["kind"] == "localdisk"
    assert rows[1]["state"] == "available" and rows[1]["power"] == "unknown"
    table = run("list", "--no-power")
    assert table.exit_code == 0
    assert re.search(r"^node01\s+localdisk\s+active\s+unknown\s+42", table.stdout, re.M)


def test_cli_list_never_hangs_on_a_slow_bmc(env, monkeypatch):
    started = threading.Event()

    class Hung:
        def status(self):
            started.set()
            time.sleep(30)

    monkeypatch.setattr("bmm.power.power_for", lambda node: Hung())
    start = time.monotonic()
    result = run("list", "--json", "--power-timeout", "0.5")
    assert time.monotonic() - start < 3
    assert started.is_set()
    assert [r["power"] for r in json.loads(result.stdout)] == ["unknown", "unknown"]


def test_cli_list_reports_power_from_the_power_package(env, monkeypatch):
    class Fake:
        def __init__(self, node):
            self.node = node

        def status(self):
            if self.node.name == "board1":
                raise RuntimeError("pdu unreachable")
            return "on"

    monkeypatch.setattr("bmm.power.power_for", Fake)
    rows = json.loads(run("list", "--json").stdout)
    assert [r["power"] for r in rows] == ["on", "unknown"]
    shown = json.loads(run("show", "board1", "--json").stdout)
    assert shown["power"] == "unknown" and shown["power_error"] == "pdu unreachable"


def test_cli_list_leaves_out_broken_nodes_with_a_warning(tmp_path, env):
    write(tmp_path, GOOD.replace("cpus      = 64", "cpus = 0"))
    result = run("list", "--json", "--no-power")
    assert result.exit_code == 0
    assert [r["name"] for r in json.loads(result.stdout)] == ["node01"]
    assert "left out nodes with problems: board1" in result.stderr


def test_cli_show_state_maintenance_and_recover(env):
    env.transition("node01", "deploying", vm_id=7)
    env.transition("node01", "error", error="copying the image failed: no space left")
    shown = json.loads(run("show", "node01", "--json", "--no-power").stdout)
    assert shown["state"] == "error" and shown["vm_id"] == 7
    assert shown["last_error"] == "copying the image failed: no space left"
    assert shown["power_settings"]["driver"] == "ipmi" and shown["power"] == "unknown"
    assert [h["to"] for h in shown["history"]] == ["deploying", "error"]
    text = run("show", "node01", "--no-power").stdout
    assert "last error: copying the image failed" in text and "available -> deploying  vm 7" in text

    on = run("maintenance", "on", "node01", "--reason", "replacing a DIMM")
    assert on.exit_code == 0 and "maintenance (replacing a DIMM)" in on.stdout
    state = json.loads(run("state", "node01", "--json").stdout)
    assert state["state"] == "maintenance" and state["previous_state"] == "error"
    off = run("maintenance", "off", "node01", "--to", "available", "--reason", "wiped by hand")
    assert off.exit_code == 0 and off.stdout.strip() == "node01: available"
    assert run("maintenance", "on", "nodeX", "--reason", "x").exit_code == 1
    assert run("maintenance", "on", "node01").exit_code == 2  # --reason is required

    assert run("recover").stdout.strip() == "no interrupted nodes"
    assert "not in the inventory" in run("state", "ghost").stderr
    missing = run("show", "ghost", "--no-power")
    assert missing.exit_code == 1 and "node ghost is not in the inventory" in missing.stderr


FAKE_KIND = """\
[nodes.fake01]
kind = "fake"
arch = "x86_64"
cpus = 8
memory_mb = 4096
macs = ["52:54:00:00:00:01"]
[nodes.fake01.power]
driver = "manual"
"""


def test_kinds_added_in_bmm_config_need_no_boot_table(tmp_path, monkeypatch):
    path = write(tmp_path, FAKE_KIND)
    monkeypatch.delenv("BMM_CONFIG", raising=False)
    monkeypatch.setattr("bmm.config.SYSTEM_CONFIG", tmp_path / "absent.toml")
    (problem,) = validate_inventory(path)
    assert problem.field == "kind" and "bmm.toml [kinds]" in problem.message
    assert validate_inventory(path, extra_kinds=("fake",)) == []
    cfg = tmp_path / "bmm.toml"
    cfg.write_text('[kinds]\nfake = "tests.fakekind:FakeKind"\n')
    monkeypatch.setenv("BMM_CONFIG", str(cfg))
    node = load_node("fake01", path)
    assert node.kind == "fake" and node.boot is None and node.to_dict()["boot"] == {}
    bad = write(tmp_path, FAKE_KIND + '[nodes.fake01.boot]\nmethod = "pxe"\n')
    assert [p.field for p in validate_inventory(bad)] == ["boot.method"]
    monkeypatch.setenv("BMM_INVENTORY", str(write(tmp_path, FAKE_KIND)))
    monkeypatch.setenv("BMM_STATE_DB", str(tmp_path / "s.db"))
    shown = run("show", "fake01", "--no-power")
    assert shown.exit_code == 0 and "boot:" not in shown.stdout


def test_load_node_trusts_a_stat_for_recheck_s_and_sees_an_edit_after_it(inv_file, monkeypatch):
    """The monitor daemon's lookups (recheck_s=1) stat the inventory at most once a second; a
    driver's (recheck_s=0) sees an edit at once."""
    import bmm.inventory as inventory

    now = [1000.0]
    monkeypatch.setattr(inventory.time, "monotonic", lambda: now[0])
    assert load_node("board1", inv_file, recheck_s=1.0).cpus == 64
    inv_file.write_text(GOOD.replace("cpus      = 64", "cpus      = 8"))
    now[0] += 0.5
    assert load_node("board1", inv_file, recheck_s=1.0).cpus == 64      # within the second
    assert load_node("board1", inv_file).cpus == 8                     # a driver looks now
    inv_file.write_text(GOOD.replace("cpus      = 64", "cpus      = 128"))
    now[0] += 0.6
    assert load_node("board1", inv_file, recheck_s=1.0).cpus == 8      # the stat above is 0.6 s old
    now[0] += 0.5
    assert load_node("board1", inv_file, recheck_s=1.0).cpus == 128
