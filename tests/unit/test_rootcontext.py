"""The CONTEXT as files in a board's root (bmm.rootcontext), unpacked by the real GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from bmm.errors import InputError
from bmm.rootcontext import EXTRACT, overlay

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtest alice@example"
CONTEXT = {"SSH_PUBLIC_KEY": KEY, "SET_HOSTNAME": "web-1", "ETH0_IP": "10.1.2.3", "ETH0_MASK": "255.255.0.0",
           "ETH0_GATEWAY": "10.1.0.1", "ETH0_MAC": "02:00:0a:01:02:03", "NETWORK": "YES"}
MACS = ["00:1a:ca:00:57:90"]


def unpack(data: bytes, root) -> None:
    subprocess.run([*EXTRACT, str(root)], input=data, check=True, capture_output=True)


def test_without_one_context_bmm_writes_key_hostname_and_address(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.chmod(root / "etc", 0o751)
    unpack(overlay(CONTEXT, [], macs=MACS, one_context=False).tar(), root)
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert oct(os.stat(root / "root/.ssh/authorized_keys").st_mode & 0o777) == "0o600"
    assert oct(os.stat(root / "root/.ssh").st_mode & 0o777) == "0o700"
    assert (root / "etc/hostname").read_text() == "web-1\n"
    interfaces = (root / "etc/network/interfaces").read_text()
    assert "iface eth0 inet static" in interfaces and "address 10.1.2.3" in interfaces
    assert "netmask 255.255.0.0" in interfaces and "gateway 10.1.0.1" in interfaces
    assert oct(os.stat(root / "etc").st_mode & 0o777) == "0o751"      # an existing directory keeps its mode
    assert not (root / "context").exists()


def test_with_one_context_the_files_go_to_slash_context(tmp_path):
    extra = tmp_path / "init.sh"
    extra.write_text("echo hi\n")
    files = overlay(CONTEXT, [(str(extra), "init.sh")], macs=MACS, one_context=True)
    root = tmp_path / "root"
    root.mkdir()
    unpack(files.tar(), root)
    text = (root / "context/context.sh").read_text()
    assert "ETH0_MAC='00:1a:ca:00:57:90'" in text          # the board's real MAC, not OpenNebula's
    assert "SET_HOSTNAME='web-1'" in text
    assert (root / "context/init.sh").read_text() == "echo hi\n"
    assert oct(os.stat(root / "context").st_mode & 0o777) == "0o700"
    assert not (root / "root").exists()                   # one-context does the rest itself


@pytest.mark.parametrize("link", ["root", "root/.ssh", "etc", "etc/network"])
def test_a_symlink_in_the_tenant_root_never_leads_outside(tmp_path, link):
    """A tenant image whose /root/.ssh (or /etc) points at the proxy's own directories gets a
    real directory; the files it points at are untouched."""
    outside = tmp_path / "proxy"
    (outside / "network").mkdir(parents=True)
    (outside / "authorized_keys").write_text("the proxy's own keys\n")
    (outside / "hostname").write_text("proxy\n")
    root = tmp_path / "root"
    parent = (root / link).parent
    parent.mkdir(parents=True, exist_ok=True)
    os.symlink(str(outside), root / link)
    unpack(overlay(CONTEXT, [], macs=MACS, one_context=False).tar(), root)
    assert not (root / link).is_symlink()
    assert (outside / "authorized_keys").read_text() == "the proxy's own keys\n"
    assert (outside / "hostname").read_text() == "proxy\n"
    assert sorted(os.listdir(outside)) == ["authorized_keys", "hostname", "network"]
    assert os.listdir(outside / "network") == []
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"


def test_a_symlinked_file_is_replaced_not_followed(tmp_path):
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink(str(target), root / "etc/hostname")
    unpack(overlay(CONTEXT, [], macs=MACS, one_context=False).tar(), root)
    assert target.read_text() == "secret\n"
    assert (root / "etc/hostname").read_text() == "web-1\n" and not (root / "etc/hostname").is_symlink()


def test_every_file_has_its_directories_first():
    members = tarfile.open(fileobj=io.BytesIO(overlay(CONTEXT, [], macs=MACS, one_context=False).tar())).getmembers()
    seen = set()
    for m in members:
        parent = m.name.rsplit("/", 1)[0] if "/" in m.name else None
        assert parent is None or parent in seen, m.name
        seen.add(m.name)
        assert (m.uid, m.gid) == (0, 0)


@pytest.mark.parametrize("key,value", [("SET_HOSTNAME", "bad name;rm"), ("ETH0_IP", "10.0.0.999"),
                                       ("ETH0_GATEWAY", "nowhere")])
def test_bad_values_are_refused_without_quoting_them(key, value):
    with pytest.raises(InputError) as exc:
        overlay({**CONTEXT, key: value}, [], macs=MACS, one_context=False)
    assert value not in str(exc.value)


def test_more_nics_than_the_board_has_is_refused():
    with pytest.raises(Exception, match="NICs"):
        overlay({**CONTEXT, "ETH1_MAC": "02:00:00:00:00:01", "ETH1_IP": "10.1.2.4"}, [], macs=MACS,
                one_context=False)


def test_the_digest_follows_the_content():
    a = overlay(CONTEXT, [], macs=MACS, one_context=False)
    b = overlay({**CONTEXT, "SET_HOSTNAME": "web-2"}, [], macs=MACS, one_context=False)
    assert a.digest() == overlay(CONTEXT, [], macs=MACS, one_context=False).digest() != b.digest()
