"""The lab's servers, each peer driven by its standard client: ipmitool for the BMC, OpenSSH
for the OS. Power state is confirmed by ssh reachability (two signals, as on real hardware)."""

import json
import subprocess
import sys
import time
import tomllib

import pytest

pytestmark = pytest.mark.lab

BMM = [sys.executable, "-c", "import sys; from bmm.cli import main; sys.exit(main())"]


def test_status_json_lists_every_endpoint(lab):
    out = subprocess.run([*BMM, "lab", "status", "--dir", str(lab.dir), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["id"] == lab.id and st["daemon"]["alive"]
    servers = [n for n in st["nodes"] if n["kind"] == "localdisk"]
    assert len(servers) >= 1
    for n in servers:
        assert n["power"] is True and n["state"] == "running"
        assert set(n["bmc"]) >= {"host", "port", "user", "password_file"}
        assert set(n["ssh"]) >= {"host", "port", "user", "key"}
        assert n["vg"].startswith(f"bl{lab.id}s") and n["boot_dir"].endswith("/boot")
    human = subprocess.run([*BMM, "lab", "status", "--dir", str(lab.dir)],
                           capture_output=True, text=True, timeout=30)
    assert human.returncode == 0 and "server1" in human.stdout and "ipmi 127.0.0.1:" in human.stdout


def test_inventory_is_bmm_format(lab):
    inv = tomllib.loads(lab.inventory.read_text())["nodes"]
    for name in lab.servers:
        n = inv[name]
        assert n["kind"] == "localdisk"
        assert n["power"]["driver"] == "ipmi" and n["power"]["interface"] == "lanplus"
        assert n["power"]["cipher_suite"] == 3 and n["power"]["port"] == lab.node(name)["bmc"]["port"]
        pw = n["power"]["password_file"]
        import os
        import stat
        assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
        assert n["boot"] == {"method": "grub", "boot_dir": "/boot", "home_entry": "home"}
        assert n["storage"]["vg"] == lab.node(name)["vg"]
        assert n["ssh"]["address"] == lab.node(name)["ip"] and n["ssh"]["key"] == str(lab.key)


def test_each_server_is_its_own_machine(lab):
    for name in lab.servers:
        r = lab.ssh(name, "hostname; ip -4 -o addr show eth0; vgs --noheadings -o vg_name; "
                          "grub-editenv /boot/grub/grubenv list; echo pid1=$(cat /proc/1/comm)")
        out = r.stdout
        assert out.splitlines()[0] == name
        assert lab.node(name)["ip"] in out
        vgs = [line.strip() for line in out.splitlines() if line.strip().startswith(f"bl{lab.id}")]
        assert vgs == [lab.node(name)["vg"]], out          # the node sees only its own disk
        assert "saved_entry=home" in out


def test_ipmitool_power_off_on_status(lab):
    name = lab.servers[0]
    assert "Chassis Power is on" in lab.ipmitool(name, "chassis", "power", "status").stdout
    lab.ipmitool(name, "chassis", "power", "off")
    assert "Chassis Power is off" in lab.ipmitool(name, "chassis", "power", "status").stdout
    lab.wait_ssh(name, up=False, timeout=10)
    lab.ipmitool(name, "chassis", "power", "on")
    assert "Chassis Power is on" in lab.ipmitool(name, "chassis", "power", "status").stdout
    lab.wait_ssh(name, up=True, timeout=20)


def test_ipmitool_power_cycle_restarts_the_os(lab):
    name = lab.servers[-1]
    before = lab.ssh(name, "cat /proc/1/stat").stdout.split()[21]     # pid 1's start time
    lab.ipmitool(name, "chassis", "power", "cycle")
    lab.wait_state(name, "running", timeout=20)
    lab.wait_ssh(name, timeout=20)
    after = lab.ssh(name, "cat /proc/1/stat").stdout.split()[21]
    assert after != before
    assert "power off" in lab.console(name) and "power on" in lab.console(name)


def test_ipmitool_reset_and_soft_off(lab):
    name = lab.servers[0]
    lab.ipmitool(name, "chassis", "power", "reset")
    lab.wait_state(name, "running", timeout=20)
    lab.wait_ssh(name, timeout=20)
    lab.ipmitool(name, "chassis", "power", "soft")           # ACPI-style: the OS powers itself off
    lab.wait_state(name, "off", timeout=10)
    assert "Chassis Power is off" in lab.ipmitool(name, "chassis", "power", "status").stdout
    assert not lab.ssh_ok(name)
    lab.ipmitool(name, "chassis", "power", "on")
    lab.wait_ssh(name, timeout=20)


def test_wrong_bmc_password_is_refused(lab, tmp_path):
    name = lab.servers[0]
    n = lab.lab_node(name)
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    r = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(n["bmc_port"]),
                        "-U", n["bmc_user"], "-f", str(bad), "chassis", "power", "status"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0


def test_reboot_and_poweroff_inside_go_to_the_lab_firmware(lab):
    name = lab.servers[0]
    r = lab.ssh(name, "reboot", check=False, timeout=20)       # the session drops, like on hardware
    assert r.returncode in (0, 255)
    lab.wait_state(name, "running", timeout=20)
    lab.wait_ssh(name, timeout=20)
    assert "reboot: Restarting system" in lab.console(name)
    before = lab.console(name).count("reboot: Restarting system")
    lab.ssh(name, "shutdown -r now", check=False, timeout=20)
    deadline = time.monotonic() + 15
    while lab.console(name).count("reboot: Restarting system") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    lab.wait_state(name, "running", timeout=20)
    lab.wait_ssh(name, timeout=20)
    assert lab.console(name).count("reboot: Restarting system") == before + 1
    lab.ssh(name, "poweroff", check=False, timeout=20)
    lab.wait_state(name, "off", timeout=10)
    assert "Chassis Power is off" in lab.ipmitool(name, "chassis", "power", "status").stdout
    lab.ipmitool(name, "chassis", "power", "on")
    lab.wait_ssh(name, timeout=20)
    # the real reboot(2) inside only ends the node's pid namespace
    lab.ssh(name, [sys.executable, "-c", "import ctypes; ctypes.CDLL(None).reboot(0x01234567)"],
            check=False, timeout=20)
    lab.wait_state(name, "running", timeout=20)
    lab.wait_ssh(name, timeout=20)


def test_emulated_lv_activation_in_the_home_os(lab):
    name = lab.servers[-1]
    vg = lab.node(name)["vg"]
    try:
        lab.ssh(name, f"lvcreate -y -n t1 -L 8M {vg} && test -b /dev/{vg}/t1 && "
                      f"printf hello | dd of=/dev/{vg}/t1 conv=fsync status=none && "
                      f"head -c 5 /dev/mapper/{vg}-t1", timeout=30)
        out = lab.ssh(name, f"head -c 5 /dev/{vg}/t1").stdout
        assert out == "hello"
        lab.ssh(name, f"lvremove -y {vg}/t1")
        assert not lab.ssh(name, f"test -e /dev/{vg}/t1", check=False).ok
    finally:
        lab.ssh(name, f"lvremove -y {vg}/t1 2>/dev/null; true", check=False)
