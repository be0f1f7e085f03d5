"""`bmm power ...`: many nodes at once, per-node lines, --json, exit status."""

import json
import time

import pytest
from click.testing import CliRunner

from bmm.cli import main
from bmm.cli import power as cli_power
from bmm.errors import FatalError

NODE = """
[nodes.{name}]
kind = "netboot"
arch = "tilepro64"
cpus = 64
memory_mb = 8192
macs = ["{mac}"]
[nodes.{name}.power]
{power}
[nodes.{name}.boot]
method = "nfsroot"
"""


@pytest.fixture
def inventory(tmp_path):
    text = NODE.format(name="m1", mac="52:54:00:00:00:01", power='driver = "manual"')
    text += NODE.format(name="m2", mac="52:54:00:00:00:02", power='driver = "manual"')
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    return str(path)


def test_status_of_many_nodes(inventory):
    r = CliRunner().invoke(main, ["power", "status", "m1", "m2", "--inventory", inventory])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["m1: unknown", "m2: unknown"]


def test_json_and_failures(inventory):
    r = CliRunner().invoke(main, ["power", "on", "m1", "nosuch", "--json", "--inventory", inventory])
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert [d["name"] for d in data] == ["m1", "nosuch"]
    assert set(data[0]) == {"name", "driver", "power", "error"}
    assert data[0]["driver"] == "manual" and data[0]["power"] == "unknown"
    assert "press its power button" in data[0]["error"]
    assert "not in the inventory" in data[1]["error"]


def test_error_lines_and_exit_status(inventory):
    r = CliRunner().invoke(main, ["power", "cycle", "m2", "--inventory", inventory])
    assert r.exit_code == 1
    assert r.output.startswith("m2: error: ")


def test_all_actions_exist():
    r = CliRunner().invoke(main, ["power", "--help"])
    for action in ("status", "on", "off", "soft-off", "cycle", "reset"):
        assert action in r.output


def test_nodes_run_concurrently(monkeypatch):
    def slow(name, action, inventory_path):
        time.sleep(0.5)
        return {"name": name, "driver": "fake", "power": "on", "error": None}

    monkeypatch.setattr(cli_power, "run_one", slow)
    t0 = time.monotonic()
    results = cli_power.run_many([f"n{i}" for i in range(6)], "on", None, parallel=8)
    assert time.monotonic() - t0 < 1.5
    assert [r["name"] for r in results] == [f"n{i}" for i in range(6)]


def test_a_failing_driver_never_hides_other_nodes(monkeypatch):
    class Boom:
        def do(self, action):
            raise FatalError("ipmi x: authentication failed", node="n1")

    class Node:
        class power:
            driver = "ipmi"

    monkeypatch.setattr("bmm.inventory.load_node", lambda name, path: Node())
    monkeypatch.setattr("bmm.power.power_for", lambda node: Boom())
    r = cli_power.run_one("n1", "on", None)
    assert r["error"] == "ipmi x: authentication failed" and r["error_kind"] == "fatal"
