"""validate_settings(): the [nodes.X.power] table, as `bmm nodes validate` reports it."""

import pytest

from bmm.errors import ConfigError, FatalError
from bmm.power import driver_for, power_for, validate_settings
from bmm.power.manual import ManualPower
from bmm.power.ssh import SshPower
from bmm.transport.ssh import SshTarget

IPMI = {"driver": "ipmi", "host": "10.0.1.11", "user": "admin", "password_file": "/etc/one/bmm/secrets/n.bmc"}
PDU = {"driver": "pdu", "host": "10.0.100.1", "user": "apc", "password_file": "/s/pdu", "outlet": 5}


def fields(errors):
    return [f for f, _ in errors]


@pytest.mark.parametrize("settings", [
    IPMI,
    {**IPMI, "port": 623, "interface": "lan", "cipher_suite": 17, "password_via": "env",
     "privilege": "OPERATOR", "timeout_s": 30, "min_interval_s": 0.5, "retries": 0,
     "command_timeout_s": 5, "soft_off_timeout_s": 600},
    PDU,
    {**PDU, "protocol": "ssh", "port": 22, "dialect": "apc", "reboot_delay_s": 3,
     "known_hosts": "/x", "host_key_policy": "strict"},
    {**PDU, "dialect": "acme", "dialects_file": "/etc/one/bmm/pdu-dialects.toml"},
    {"driver": "ssh"},
    {"driver": "ssh", "off_command": ["systemctl", "poweroff"], "bmc": {k: v for k, v in IPMI.items() if k != "driver"}},
    {"driver": "manual", "instructions": "Call the lab on x1234."},
])
def test_valid(settings):
    assert validate_settings(settings) == []


@pytest.mark.parametrize("settings,field,words", [
    ({}, "driver", "required"),
    ({"driver": "redfish"}, "driver", "not built yet"),
    ({"driver": "vbox"}, "driver", "unknown power driver"),
    ({**IPMI, "hots": "x"}, "hots", "unknown key"),
    ({**IPMI, "password": "x"}, "password", "unknown key"),
    ({k: v for k, v in IPMI.items() if k != "password_file"}, "password_file", "required"),
    ({**IPMI, "port": 70000}, "port", "port"),
    ({**IPMI, "port": "623"}, "port", "must be a TCP/UDP port"),
    ({**IPMI, "interface": "open"}, "interface", "lanplus"),
    ({**IPMI, "cipher_suite": 99}, "cipher_suite", "0-17"),
    ({**IPMI, "timeout_s": 0}, "timeout_s", "must be a positive number"),
    ({**IPMI, "retries": -1}, "retries", "0 or more"),
    ({**IPMI, "retries": True}, "retries", "must be an integer"),
    ({**PDU, "outlet": 0}, "outlet", "outlet"),
    ({**PDU, "protocol": "http"}, "protocol", "telnet"),
    ({**PDU, "dialect": "acme"}, "dialect", "unknown PDU dialect"),
    ({k: v for k, v in PDU.items() if k != "outlet"}, "outlet", "required"),
    ({"driver": "ssh", "off_command": "poweroff"}, "off_command", "list of strings"),
    ({"driver": "ssh", "bmc": {"host": "h"}}, "bmc.user", "required"),
    ({"driver": "ssh", "bmc": {**IPMI}}, "bmc.driver", "unknown key"),
    ({"driver": "manual", "host": "x"}, "host", "unknown key"),
])
def test_invalid(settings, field, words):
    errors = validate_settings(settings)
    assert field in fields(errors), errors
    message = dict(errors)[field]
    assert words in message, message


def test_not_a_table():
    assert validate_settings(["driver"]) == [("", "must be a table")]


class _Power:
    def __init__(self, driver, settings):
        self.driver = driver
        self.settings = settings


class _Ssh:
    def target(self, name):
        return SshTarget(host="127.0.0.1", port=1, node=name)


class _Node:
    def __init__(self, name, power):
        self.name = name
        self.power = power
        self.ssh = _Ssh()


def test_power_for_adapts_an_inventory_node():
    from types import MappingProxyType

    node = _Node("n1", _Power("manual", MappingProxyType({"driver": "manual"})))
    p = power_for(node)
    assert isinstance(p, ManualPower) and p.node == "n1"
    node = _Node("n2", _Power("ssh", MappingProxyType({"driver": "ssh", "off_command": ("halt", "-p")})))
    p = power_for(node)
    assert isinstance(p, SshPower) and p.target.port == 1 and p.off_command == ["halt", "-p"]


def test_power_for_reports_the_first_problem():
    with pytest.raises(ConfigError, match=r"node n1: power.password_file is required \(and 1 more\)"):
        driver_for("n1", {"driver": "pdu", "host": "h", "user": "u"})


# -- the manual and ssh drivers (no peer needed) -------------------------------------------

def test_manual_asks_the_operator():
    p = driver_for("node07", {"driver": "manual", "instructions": "Rack B, slot 4"})
    assert p.status() == "unknown"
    for action in ("on", "off", "soft_off", "reset", "cycle"):
        with pytest.raises(FatalError) as exc:
            p.do(action)
        msg = str(exc.value)
        assert "node07" in msg and "manual" in msg and "Rack B, slot 4" in msg
        assert "bmm power status node07" in msg


def test_ssh_without_bmc(tmp_path, monkeypatch):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path))
    p = driver_for("n1", {"driver": "ssh"}, ssh_target=SshTarget(host="127.0.0.1", port=1, node="n1"))
    assert p.status() == "unknown"
    assert p.reachable() is False
    with pytest.raises(FatalError, match="cannot power on through ssh"):
        p.on()
    with pytest.raises(FatalError, match="without a BMC"):
        p.cycle()
    assert p.soft_off() == "unknown"   # nothing answers: nothing to ask


def test_ssh_needs_the_nodes_ssh_table():
    p = driver_for("n1", {"driver": "ssh"})
    with pytest.raises(ConfigError, match=r"\[ssh\] table"):
        p.soft_off()
