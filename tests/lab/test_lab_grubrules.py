"""GRUB rule evaluation (bmm_lab.grubboot) on Debian-like grub.cfg files; grubenv via the real
grub-editenv. No root needed."""

import shutil
import subprocess

import pytest

from bmm_lab import grubboot
from bmm_lab.server import write_boot_dir

pytestmark = pytest.mark.skipif(shutil.which("grub-editenv") is None, reason="needs grub-editenv")

CUSTOM = """\
menuentry 'bmm vm 42' --id bmm-vm42 {
    insmod lvm
    insmod ext2
    set root=(lvm/my--vg-lv--one--42)
    linux /boot/vmlinuz root=/dev/mapper/my--vg-lv--one--42 ro
    initrd /boot/initrd.img
}
menuentry "Other OS" {
    linux /vmlinuz root=/dev/vg0/other ro
}
submenu 'Advanced options' $menuentry_id_option 'adv' {
    menuentry 'Recovery' $menuentry_id_option 'rec' {
        linux /vmlinuz root=LABEL=home single
    }
    menuentry 'Tenant recovery' --id trec {
        set root='lvm/vg0-t1,msdos1'
        linux /vmlinuz
    }
}
"""


@pytest.fixture
def boot(tmp_path):
    b = tmp_path / "boot"
    write_boot_dir(b)
    (b / "grub" / "custom.cfg").write_text(CUSTOM)
    return b


def editenv(boot, *args):
    subprocess.run(["grub-editenv", str(boot / "grub" / "grubenv"), *args], check=True)


def test_menu_parsing(boot):
    menu = grubboot.parse_menu(boot / "grub" / "grub.cfg")
    assert [e.title for e in menu.entries] == ["Home OS", "bmm vm 42", "Other OS", "Recovery", "Tenant recovery"]
    assert [e.index for e in menu.entries] == ["0", "1", "2", "3>0", "3>1"]
    assert menu.entries[0].id == "home" and menu.entries[0].root_lv is None
    vm = menu.entries[1]
    assert (vm.id, vm.root_vg, vm.root_lv) == ("bmm-vm42", "my-vg", "lv-one-42")
    assert (menu.entries[2].root_vg, menu.entries[2].root_lv) == ("vg0", "other")
    assert menu.entries[3].path == "Advanced options>Recovery" and menu.entries[3].id_path == "adv>rec"
    assert (menu.entries[4].root_lv, menu.entries[4].partition) == ("t1", 1)
    assert menu.default_expr == "${saved_entry}"
    assert len(menu.files) == 2


def test_saved_entry_home_by_default(boot):
    c = grubboot.choose(boot)
    assert c.entry.id == "home" and c.home and "saved_entry=home" in c.reason


def test_next_entry_once_then_saved(boot):
    editenv(boot, "set", "next_entry=bmm-vm42")
    c = grubboot.choose(boot)
    assert c.entry.title == "bmm vm 42" and not c.home and "once" in c.reason
    assert "next_entry=\n" in subprocess.run(["grub-editenv", str(boot / "grub" / "grubenv"), "list"],
                                             capture_output=True, text=True).stdout + "\n"
    assert grubboot.choose(boot).entry.id == "home"


def test_saved_entry_by_title_index_and_submenu_path(boot):
    for value, title in (("Other OS", "Other OS"), ("1", "bmm vm 42"), ("Advanced options>Recovery", "Recovery"),
                         ("adv>trec", "Tenant recovery"), ("3>1", "Tenant recovery"), ("3", "Recovery")):
        editenv(boot, "set", f"saved_entry={value}")
        assert grubboot.choose(boot).entry.title == title, value


def test_grub_set_default_and_grub_reboot_tools(boot):
    subprocess.run(["grub-set-default", f"--boot-directory={boot}", "bmm vm 42"], check=True)
    assert grubboot.choose(boot).entry.id == "bmm-vm42"
    subprocess.run(["grub-reboot", f"--boot-directory={boot}", "Other OS"], check=True, capture_output=True)
    assert grubboot.choose(boot).entry.title == "Other OS"
    assert grubboot.choose(boot).entry.id == "bmm-vm42"


def test_unknown_default_falls_back_to_entry_0(boot):
    editenv(boot, "set", "saved_entry=nonexistent")
    c = grubboot.choose(boot)
    assert c.entry.index == "0" and "falling back" in c.reason


def test_literal_default_ignores_saved_entry(tmp_path):
    b = tmp_path / "boot"
    write_boot_dir(b)
    cfg = b / "grub" / "grub.cfg"
    cfg.write_text(cfg.read_text().replace('set default="${saved_entry}"', 'set default="1"'))
    (b / "grub" / "custom.cfg").write_text(CUSTOM)
    assert grubboot.choose(b).entry.title == "bmm vm 42"


def test_dm_name_split():
    assert grubboot.split_dm_name("a--b-c--d") == ("a-b", "c-d")
    assert grubboot.split_dm_name("vg-lv") == ("vg", "lv")
    assert grubboot.split_dm_name("novg") is None
