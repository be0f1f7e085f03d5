"""Installing the remotes and OpenNebula's configuration: idempotent, and exactly what oned needs."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bmm import oned_config
from bmm.remotes import install_remotes
from tests.support import REPO


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)} {st.st_mode:o} {st.st_mtime_ns}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_install_remotes_twice_changes_nothing(tmp_path):
    dest = tmp_path / "remotes"
    first = install_remotes(dest, python="/opt/bmm/bin/python")
    assert first.written and not first.unchanged
    digest = tree_digest(dest)
    second = install_remotes(dest, python="/opt/bmm/bin/python")
    assert second.written == []
    assert tree_digest(dest) == digest
    deploy = (dest / "vmm" / "bmm" / "deploy").read_text()
    assert deploy.startswith("#!/opt/bmm/bin/python\n")
    assert os.access(dest / "tm" / "bmm" / "clone", os.X_OK)
    assert (dest / "im" / "bmm.d" / "monitord-client_control.sh").exists()


def test_operator_config_is_never_overwritten(tmp_path):
    dest = tmp_path / "remotes"
    install_remotes(dest, python=sys.executable)
    cfg = dest / "etc" / "bmm" / "bmm.toml"
    cfg.write_text('inventory = "/srv/nodes.toml"\n')
    report = install_remotes(dest, python=sys.executable)
    assert cfg.read_text() == 'inventory = "/srv/nodes.toml"\n'
    assert "etc/bmm/bmm.toml" in report.kept


def test_vm_mad_lists_every_action_locally():
    args = re.search(r'ARGUMENTS\s*=\s*"([^"]*)"', oned_config.VM_MAD).group(1)
    local = set(args.split("-l ")[1].split()[0].split(","))
    # one_vmm_sh's list in 7.4 (protocol §1.1) plus exec/exec_cancel (7.2+)
    needed = set("deploy,shutdown,reboot,cancel,save,restore,migrate,poll,pre,post,clean,update_sg,"
                 "snapshotcreate,snapshotrevert,snapshotdelete,attach_nic,detach_nic,update_nic,reset,"
                 "prereconfigure,reconfigure,attach_disk,detach_disk,resize_disk,resize,exec,exec_cancel".split(","))
    assert needed <= local
    assert args.endswith(" bmm")
    assert 'TYPE           = "xml"' in oned_config.VM_MAD
    assert 'SUNSTONE_NAME' in oned_config.VM_MAD
    assert 'EXECUTABLE    = "one_im_sh"' in oned_config.IM_MAD


ONED = """# stock oned.conf excerpt
TM_MAD = [
    EXECUTABLE = "one_tm",
    ARGUMENTS = "-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,local,ceph,dev,iscsi_libvirt"
]

DATASTORE_MAD = [
    EXECUTABLE = "one_datastore",
    ARGUMENTS  = "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync -s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2"
]
"""


def test_apply_config_once_with_backup(tmp_path):
    oned = tmp_path / "oned.conf"
    oned.write_text(ONED)
    mon = tmp_path / "monitord.conf"
    mon.write_text('IM_MAD = [ NAME="kvm", EXECUTABLE="one_im_ssh", ARGUMENTS="-r 3 -t 15 -w 90 kvm" ]' + "\n")
    assert oned_config.apply_oned(oned) is True
    assert oned_config.apply_monitord(mon) is True
    text = oned.read_text()
    assert "-d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,local,ceph,dev,iscsi_libvirt,bmm\"" in text
    assert "-s shared,ssh,ceph,fs_lvm,fs_lvm_ssh,qcow2,bmm\"" in text
    assert text.count(oned_config.BEGIN) == 1 and 'NAME           = "bmm"' in text
    assert 'TM_MAD_CONF = [' in text
    backups = sorted(tmp_path.glob("oned.conf.bmm-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == ONED
    snapshot = oned.read_text(), mon.read_text()
    assert oned_config.apply_oned(oned) is False
    assert oned_config.apply_monitord(mon) is False
    assert (oned.read_text(), mon.read_text()) == snapshot
    assert len(list(tmp_path.glob("*.bmm-backup-*"))) == 2


def test_print_config_names_every_block():
    text = oned_config.print_config()
    for needle in ("VM_MAD = [", "TM_MAD_CONF = [", "IM_MAD = [", "onedatastore create", "onehost create", "RUNNING_VMS = 0"):
        assert needle in text


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh needs root")
def test_install_sh_remotes_twice_same_tree(tmp_path):
    """The issue's done-when: `./install.sh --remotes DIR` twice produces the same tree."""
    dest = tmp_path / "x"
    env = dict(os.environ)
    for _ in range(2):
        proc = subprocess.run(["bash", str(REPO / "install.sh"), "--dev", "--remotes", str(dest)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if _ == 0:
            digest = tree_digest(dest)
    assert tree_digest(dest) == digest
    assert "installing bmm" not in proc.stdout            # nothing reinstalled the second time
    assert "0 written" in proc.stdout
    assert (dest / "vmm" / "bmm" / "deploy").read_text().startswith("#!/opt/bmm/bin/python\n")
