"""`bmm doctor` against the lab: every check passes on a healthy front-end, and each kind of
breakage fails its own check only, with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

from tests.onemock import OpenNebula

ONED_CONF = textwrap.dedent("""\
    TM_MAD = [
        EXECUTABLE = "one_tm",
        ARGUMENTS = "-t 15 -d dummy,lvm,shared,fs_lvm,qcow2,ssh,local,ceph,dev" ]
    DATASTORE_MAD = [
        EXECUTABLE = "one_datastore",
        ARGUMENTS  = "-t 15 -d dummy,fs,lvm,ceph,dev -s dummy,lvm,shared,ssh,local,ceph,fs_lvm,qcow2" ]
    """)


def doctor(config: Path, *args: str) -> tuple[int, list[dict]]:
    res = subprocess.run(["bmm", "--config", str(config), "doctor", "--no-oned", "--json", *args],
                         capture_output=True, text=True, timeout=180)
    return res.returncode, json.loads(res.stdout)


def failed(checks):
    return {c["name"]: c["detail"] for c in checks if not c["ok"]}


def test_doctor_on_the_lab(lab, tmp_path):
    root = tmp_path / "frontend"
    one = OpenNebula(root / "var", lab.inventory)
    etc = root / "etc"
    etc.mkdir()
    (etc / "oned.conf").write_text(ONED_CONF)
    (etc / "monitord.conf").write_text("MANAGER_TIMER = 15\n")
    config = one.remotes / "etc" / "bmm" / "bmm.toml"
    subprocess.run(["bmm", "remotes", "apply-config", "--oned", str(etc / "oned.conf"),
                    "--monitord", str(etc / "monitord.conf")], check=True, capture_output=True, timeout=60)

    rc, checks = doctor(config)
    assert rc == 0 and failed(checks) == {}, failed(checks)
    names = {c["name"] for c in checks}
    for node in lab.servers:
        assert f"node {node}: power (ipmi)" in names and any(n.startswith(f"node {node}: ssh") for n in names)

    # a hung BMC fails that node's power check, and only it
    server = lab.servers[0]
    lan_conf = str(Path(lab.lab_node(server)["dir"]) / "bmc" / "lan.conf").encode()
    bmc = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and lan_conf in (p / "cmdline").read_bytes().split(b"\0"))
    os.kill(bmc, signal.SIGSTOP)
    try:
        rc, checks = doctor(config)
    finally:
        os.kill(bmc, signal.SIGCONT)
    assert rc == 1 and list(failed(checks)) == [f"node {server}: power"], failed(checks)

    # a remote that differs from this bmm, and an oned.conf without bmm's blocks
    deploy = one.remotes / "vmm" / "bmm" / "deploy"
    deploy.write_text(deploy.read_text() + "\n# edited by hand\n")
    (etc / "oned.conf").write_text(ONED_CONF)
    rc, checks = doctor(config, "--no-nodes")
    problems = failed(checks)
    assert rc == 1 and set(problems) == {"remotes", "oned.conf"}, problems
    assert "vmm/bmm/deploy" in problems["remotes"] and "TM_MAD -d does not list bmm" in problems["oned.conf"]
