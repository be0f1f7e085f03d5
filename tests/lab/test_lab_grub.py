"""GRUB's rules end to end on a lab server: real grub-reboot / grub-set-default in the home OS,
power through the real BMC, and the booted OS checked over ssh. Uses a fresh lab (module_lab)
because it re-images and breaks nodes."""

import subprocess

import pytest

from bmm_lab import images

pytestmark = pytest.mark.lab

SERVER = "server1"


def entry(title, ident, vg, lv):
    dm = f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    return (f"menuentry '{title}' --id {ident} {{\n"
            "    insmod lvm\n    insmod ext2\n"
            f"    set root=(lvm/{dm})\n"
            f"    linux /boot/vmlinuz root=/dev/mapper/{dm} ro\n"
            "    initrd /boot/initrd.img\n}\n")


@pytest.fixture(scope="module")
def tenant(module_lab, tmp_path_factory):
    """server1 with LVs: vm1 (tenant A, bare ext4, key from a CONTEXT iso in LV ctx1),
    vm2 (tenant B, partitioned qcow2 image written with qemu-img), broken (no init), and a
    custom.cfg with entries for them plus one for a missing LV."""
    lab = module_lab
    work = tmp_path_factory.mktemp("grub")
    key = lab.key.with_suffix(".pub").read_text() if lab.key.with_suffix(".pub").exists() else \
        (lab.dir / "ssh" / "lab_key.pub").read_text()
    a = images.build_image(work / "a.img", os_id="tenanta", name="Tenant A", size="24M")
    b = images.build_image(work / "b.qcow2", os_id="tenantb", name="Tenant B", layout="disk", fmt="qcow2",
                           size="24M", authorized_keys=key)
    ctx = images.build_context_iso(work / "ctx.iso", ssh_public_key=key, hostname="vm42")
    broken = work / "broken.img"
    subprocess.run(["truncate", "-s", "16M", str(broken)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(broken)], check=True)
    vg = lab.node(SERVER)["vg"]
    lab.ssh(SERVER, f"set -e; lvcreate -y -n vm1 -L 32M {vg}; lvcreate -y -n ctx1 -L 4M {vg}; "
                    f"lvcreate -y -n vm2 -L 32M {vg}; lvcreate -y -n broken -L 16M {vg}; "
                    f"dd if={a} of=/dev/{vg}/vm1 bs=1M conv=fsync status=none; "
                    f"dd if={ctx} of=/dev/{vg}/ctx1 bs=1M conv=fsync status=none; "
                    f"qemu-img convert -f qcow2 -O raw {b} /dev/{vg}/vm2; "
                    f"dd if={broken} of=/dev/{vg}/broken bs=1M conv=fsync status=none", timeout=60)
    cfg = (entry("bmm vm 1", "bmm-vm1", vg, "vm1") + entry("bmm vm 2", "bmm-vm2", vg, "vm2")
           + entry("broken", "bmm-broken", vg, "broken") + entry("gone", "bmm-gone", vg, "nosuchlv"))
    lab.ssh(SERVER, "cat > /boot/grub/custom.cfg", input=cfg)
    return lab


def boot_via_bmc(lab, state="running", *, tenant=False):
    """Power-cycle through the BMC and wait for the OS. A tenant OS has host keys of its own;
    the home OS must answer with the key the lab pinned."""
    lab.ipmitool(SERVER, "chassis", "power", "cycle")
    lab.wait_state(SERVER, state, timeout=25)
    if state == "running":
        lab.wait_ssh(SERVER, timeout=20, tenant=tenant)


def os_id(lab, *, tenant=False):
    for line in lab.ssh(SERVER, "cat /etc/os-release", tenant=tenant).stdout.splitlines():
        if line.startswith("ID="):
            return line[3:]
    return None


def test_next_entry_boots_once_then_saved_entry(tenant):
    lab = tenant
    assert os_id(lab) != "tenanta"
    lab.ssh(SERVER, ["grub-reboot", "--boot-directory=/boot", "bmm-vm1"])
    env = lab.ssh(SERVER, ["grub-editenv", "/boot/grub/grubenv", "list"]).stdout
    assert "next_entry=bmm-vm1" in env and "saved_entry=home" in env
    boot_via_bmc(lab, tenant=True)
    assert os_id(lab, tenant=True) == "tenanta"
    assert lab.ssh(SERVER, "hostname", tenant=True).stdout.strip() == "vm42"        # from the CONTEXT iso
    assert "one-context (emulated)" in lab.console(SERVER)
    boot_via_bmc(lab)                                                  # next cycle: saved_entry again
    assert lab.ssh(SERVER, "hostname").stdout.strip() == SERVER
    env = lab.ssh(SERVER, ["grub-editenv", "/boot/grub/grubenv", "list"]).stdout
    assert "next_entry=bmm-vm1" not in env and "saved_entry=home" in env


def test_saved_entry_by_title_persists_and_reboot_inside_follows_it(tenant):
    lab = tenant
    lab.ssh(SERVER, ["grub-set-default", "--boot-directory=/boot", "bmm vm 2"])
    boot_via_bmc(lab, tenant=True)
    assert os_id(lab, tenant=True) == "tenantb"      # partitioned qcow2 image, key baked in
    lab.ssh(SERVER, "reboot", check=False, tenant=True)   # busybox reboot -> the lab's firmware
    lab.wait_state(SERVER, "running", timeout=25)
    lab.wait_ssh(SERVER, timeout=20, tenant=True)
    assert os_id(lab, tenant=True) == "tenantb"
    # the tenant cannot reach the home OS's /boot: switch back from the front-end side
    boot = lab.node(SERVER)["boot_dir"]
    subprocess.run(["grub-set-default", f"--boot-directory={boot}", "home"], check=True, capture_output=True)
    boot_via_bmc(lab)
    assert lab.ssh(SERVER, "hostname").stdout.strip() == SERVER


def test_entry_without_init_fails_to_boot(tenant):
    lab = tenant
    lab.ssh(SERVER, ["grub-reboot", "--boot-directory=/boot", "bmm-broken"])
    boot_via_bmc(lab, state="failed")
    assert "Chassis Power is on" in lab.ipmitool(SERVER, "chassis", "power", "status").stdout
    assert not lab.ssh_ok(SERVER)
    assert "No working init found" in lab.console(SERVER)
    boot_via_bmc(lab)                                 # next_entry was consumed: home again
    assert lab.ssh(SERVER, "hostname").stdout.strip() == SERVER


def test_entry_naming_a_missing_lv_fails_to_boot(tenant):
    lab = tenant
    lab.ssh(SERVER, ["grub-reboot", "--boot-directory=/boot", "bmm-gone"])
    boot_via_bmc(lab, state="failed")
    assert "not found" in lab.console(SERVER)
    assert "does not exist" in lab.daemon_status(SERVER)["detail"]
    boot_via_bmc(lab)
    assert lab.ssh(SERVER, "hostname").stdout.strip() == SERVER
