"""bmm.boot.grub with the real grub-editenv / grub-reboot / grub-set-default on a private /boot."""

import os
from pathlib import Path

import pytest

from bmm.boot import grub
from bmm.storage.lvm import mapper_name
from bmm.errors import BmmError
from tests.lab.lvm_support import local_executor
from tests.support import require_lab
from tests.unit.test_grub_entries import DEBIAN_CFG

TOOLS = ("grub-editenv", "grub-reboot", "grub-set-default")

HOME_CFG = DEBIAN_CFG.replace("$menuentry_id_option 'gnulinux-simple-9a7c'", "$menuentry_id_option 'home'")


@pytest.fixture
def boot(tmp_path):
    require_lab(*TOOLS)
    b = tmp_path / "boot"
    (b / "grub").mkdir(parents=True)
    (b / "grub" / "grub.cfg").write_text(HOME_CFG)
    return b


@pytest.fixture
def ex():
    return local_executor(node="gnode")


def env(boot: Path) -> dict:
    return grub.read_env(local_executor(), str(boot))


def test_home_stays_saved_tenant_boots_once(boot, ex):
    require_lab(*TOOLS)
    b = str(boot)
    assert grub.read_env(ex, b) == {} and grub.saved_entry(ex, b) is None
    assert grub.ensure_saved_entry(ex, b, "home") is True
    assert grub.ensure_saved_entry(ex, b, "home") is False
    assert grub.saved_entry(ex, b) == "home"
    grub.set_next_entry(ex, b, "bmm-vm42")
    assert env(boot)["next_entry"] == "bmm-vm42" and env(boot)["saved_entry"] == "home"
    grub.clear_next_entry(ex, b)
    assert "next_entry" not in env(boot) and env(boot)["saved_entry"] == "home"
    grub.clear_next_entry(ex, b)             # idempotent


def entry(entry_id, title, vg, lv, kernel, initrd, cmdline=""):
    return grub.TenantEntry(entry_id, title, mapper_name(vg, lv), kernel, initrd, cmdline)


def test_tenant_entries_in_bmm_owned_custom_cfg(boot, ex):
    require_lab(*TOOLS)
    b = str(boot)
    grub.write_tenant_entry(ex, b, entry("bmm-vm42", "bmm vm 42", "bmmvg", "one-42-0", "/boot/vmlinuz-6.1.0-9-amd64",
                                         "/boot/initrd.img-6.1.0-9-amd64", "console=ttyS0"))
    grub.write_tenant_entry(ex, b, entry("bmm-vm43", "bmm vm 43", "bmmvg", "one-43-0", "/vmlinuz", "/initrd.img"))
    grub.write_tenant_entry(ex, b, entry("bmm-vm42", "bmm vm 42 (redeployed)", "bmmvg", "one-42-0", "/vmlinuz",
                                         "/initrd.img"))
    text = (boot / "grub" / "custom.cfg").read_text()
    assert text.startswith(grub.MARKER)
    assert grub.tenant_entries(ex, b) == ["bmm-vm42", "bmm-vm43"]
    assert "redeployed" in text and "vmlinuz-6.1.0-9-amd64" not in text
    entries = grub.menu_entries(ex, b)
    assert [(e.index, e.id) for e in entries][-2:] == [("3", "bmm-vm42"), ("4", "bmm-vm43")]
    assert entries[0].id == "home" and entries[1].path.startswith("Advanced options for Debian GNU/Linux>")
    assert grub.remove_tenant_entry(ex, b, "bmm-vm42") is True
    assert grub.remove_tenant_entry(ex, b, "bmm-vm42") is False
    assert grub.tenant_entries(ex, b) == ["bmm-vm43"]
    assert sorted(os.listdir(boot / "grub")) == ["custom.cfg", "grub.cfg"]      # no temp files left
    grub.check_boot_setup(ex, b, "home")


def test_never_clobbers_the_admins_custom_cfg(boot, ex):
    require_lab(*TOOLS)
    mine = "menuentry 'Rescue' --id rescue {\n    linux /rescue\n}\n"
    (boot / "grub" / "custom.cfg").write_text(mine)
    with pytest.raises(BmmError, match="not written by bmm"):
        grub.write_tenant_entry(ex, str(boot), entry("bmm-vm1", "t", "vg", "lv", "/vmlinuz", "/initrd.img"))
    with pytest.raises(BmmError, match="not written by bmm"):
        grub.remove_tenant_entry(ex, str(boot), "bmm-vm1")
    assert (boot / "grub" / "custom.cfg").read_text() == mine
    assert grub.remove_tenant_entry(ex, str(boot / "nonexistent"), "x") is False


def test_errors_name_the_node_and_cause(boot, ex):
    require_lab(*TOOLS)
    with pytest.raises(BmmError, match="node gnode: .*does not exist"):
        grub.menu_entries(ex, str(boot / "missing"))
    (boot / "grub" / "grub.cfg").write_text("menuentry 'x' {\n}\n")
    with pytest.raises(BmmError, match="next_entry.*saved_entry.*custom.cfg.*no menu entry 'home'"):
        grub.check_boot_setup(ex, str(boot), "home")
    with pytest.raises(BmmError, match="node gnode: grub-reboot"):
        grub.set_next_entry(ex, str(boot / "missing"), "x")


def test_the_lab_grub_emulator_boots_our_entry_once(boot, ex):
    """The lab's GRUB emulator (bmm_lab.grubboot) reads exactly what bmm writes."""
    require_lab(*TOOLS)
    grubboot = pytest.importorskip("bmm_lab.grubboot")
    b = str(boot)
    grub.ensure_saved_entry(ex, b, "home")
    grub.write_tenant_entry(ex, b, entry("bmm-vm42", "bmm vm 42", "bmm-vg", "one-42-0", "/vmlinuz", "/initrd.img"))
    grub.set_next_entry(ex, b, "bmm-vm42")
    first = grubboot.choose(boot, home_entry="home")
    assert (first.entry.id, first.entry.root_vg, first.entry.root_lv, first.home) == \
        ("bmm-vm42", "bmm-vg", "one-42-0", False)
    again = grubboot.choose(boot, home_entry="home")
    assert again.home and again.entry.id == "home"
