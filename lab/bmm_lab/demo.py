"""`bmm lab demo`: a lab comes up and shows, in readable steps, what it is made of."""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

from bmm_lab import LabError, images, rack
from bmm_lab.testing import LabHandle


class Demo:
    def __init__(self, say):
        self.say = say
        self.t0 = time.monotonic()
        self.n = 0

    def step(self, title: str) -> None:
        self.n += 1
        self.say("")
        self.say(f"== step {self.n}: {title}")

    def line(self, msg: str) -> None:
        self.say(f"   [{time.monotonic() - self.t0:6.2f}s] {msg}")

    def cmd(self, argv: list[str], out: str = "") -> None:
        self.line("$ " + shlex.join(argv))
        for text in out.strip().splitlines()[:6]:
            self.say(f"             {text}")


def _pdu_session(demo: Demo, node: dict, commands: list[str]) -> None:
    """Drive the PDU with the real telnet client, the way pdu_mgr's expect script did."""
    import pexpect
    pdu = node["pdu"]
    password = Path(pdu["password_file"]).read_text().strip()
    child = pexpect.spawn("telnet", [pdu["host"], str(pdu["port"])], timeout=15, encoding="utf-8")
    try:
        child.expect("User Name :")
        child.sendline(pdu["user"])
        child.expect("Password  :")
        child.sendline(password)
        child.expect("apc>")
        for c in commands:
            child.sendline(c)
            child.expect("apc>")
            answer = [ln.strip() for ln in child.before.splitlines() if ln.strip() and c not in ln]
            demo.line(f"telnet {pdu['host']} {pdu['port']}  apc> {c}   -> {' | '.join(answer)[:90]}")
        child.sendline("exit")
    finally:
        child.close(force=True)


def run(lab_dir=None, *, servers: int = 2, boards: int | None = None, keep: bool = False, say=print) -> None:
    raw_say = say

    def say(msg: str) -> None:
        try:
            raw_say(msg)
        except Exception:  # noqa: BLE001 - output trouble must never skip the teardown
            pass

    demo = Demo(say)
    say("bmm lab demo: a simulated rack built from real peers (ipmi_sim + ipmitool, OpenSSH, LVM,")
    say("grub-editenv, a telnet PDU, TFTP); the firmware and LV activation are emulated (see --help).")
    if lab_dir is None:
        lab_dir = tempfile.mkdtemp(prefix="bmmlab-demo-", dir="/var/tmp")
    demo.step(f"bring the lab up in {lab_dir}")
    h = LabHandle.up(lab_dir, servers=servers, boards=boards, say=lambda m: say("   " + m))
    try:
        _run_steps(demo, h)
        demo.step("done")
        demo.line(f"inventory for every bmm command: {h.inventory}")
    finally:
        if keep:
            say(f"\nthe lab stays up: bmm lab status --dir {h.dir}; bmm lab down --dir {h.dir}")
        else:
            demo.step("tear down")
            rep = rack.down(h.dir, say=lambda m: say("   " + m), purge=True)
            demo.line(f"removed {rep['netns']} netns, {rep['loops']} loop devices; nothing of lab {rep['id']} remains")


def _run_steps(demo: Demo, h: LabHandle) -> None:
    if h.servers:
        s = h.servers[0]
        n = h.lab_node(s)
        demo.step(f"power {s} through its real BMC (ipmi_sim on 127.0.0.1:{n['bmc_port']}, ipmitool lanplus)")
        base = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(n["bmc_port"]),
                "-U", n["bmc_user"], "-f", n["password_file"], "chassis", "power"]
        demo.cmd(base + ["status"], h.ipmitool(s, "chassis", "power", "status").stdout)
        demo.cmd(base + ["off"], h.ipmitool(s, "chassis", "power", "off").stdout)
        h.wait_ssh(s, up=False, timeout=15)
        demo.line(f"ssh root@{n['addr']} is refused: the server is off")
        demo.cmd(base + ["on"], h.ipmitool(s, "chassis", "power", "on").stdout)
        waited = h.wait_ssh(s, timeout=30)
        demo.line(f"ssh root@{n['addr']} answers again after {waited:.2f}s: {h.ssh(s, 'hostname').stdout.strip()}")

    if h.boards:
        b = h.boards[0]
        node = h.node(b)
        demo.step(f"power {b} through the real PDU (telnet {node['pdu']['host']}:{node['pdu']['port']}, outlet {node['pdu']['outlet']})")
        outlet = node["pdu"]["outlet"]
        _pdu_session(demo, node, [f"olOff {outlet}", f"olStatus {outlet}"])
        h.wait_ssh(b, up=False, timeout=15)
        demo.line(f"ssh root@{node['ip']} is refused: the board is off")
        _pdu_session(demo, node, [f"olOn {outlet}", f"olStatus {outlet}"])
        waited = h.wait_ssh(b, timeout=60)
        demo.line(f"the board booted again and answers ssh after {waited:.2f}s")

    if h.servers:
        s = h.servers[0]
        vg = h.node(s)["vg"]
        demo.step(f"boot {s} into a different GRUB entry (a tenant OS on an LV)")
        with tempfile.TemporaryDirectory(prefix="bmm-demo-img-", dir="/var/tmp") as work:
            key = (h.dir / "ssh" / "lab_key.pub").read_text()
            img = images.build_image(Path(work) / "tenant.img", os_id="demo", name="bmm demo tenant",
                                     authorized_keys=key, size="24M")
            demo.line(f"built a 24M tenant image with busybox: {img.name}")
            script = (f"lvcreate -y -n demo-vm -L 32M {vg} && "
                      f"dd if={img} of=/dev/{vg}/demo-vm bs=1M conv=fsync status=none")
            demo.cmd(["ssh", f"root@{h.node(s)['ip']}", script], h.ssh(s, script, timeout=60).stdout)
        dm = f"{vg}-demo--vm"
        cfg = (f"menuentry 'bmm demo vm' --id bmm-demo {{\n    insmod lvm\n    insmod ext2\n"
               f"    set root=(lvm/{dm})\n    linux /boot/vmlinuz root=/dev/mapper/{dm} ro\n"
               f"    initrd /boot/initrd.img\n}}\n")
        h.ssh(s, "cat > /boot/grub/custom.cfg", input=cfg)
        demo.line("wrote /boot/grub/custom.cfg with menuentry 'bmm demo vm' --id bmm-demo")
        h.ssh(s, ["grub-reboot", "--boot-directory=/boot", "bmm-demo"], check=False)
        env = h.ssh(s, ["grub-editenv", "/boot/grub/grubenv", "list"]).stdout
        demo.cmd(["grub-reboot", "--boot-directory=/boot", "bmm-demo"], env)
        demo.cmd(["ipmitool", "...", "chassis", "power", "cycle"], h.ipmitool(s, "chassis", "power", "cycle").stdout)
        h.wait_state(s, "running", timeout=30)
        h.wait_ssh(s, timeout=30)
        demo.cmd(["ssh", f"root@{h.node(s)['ip']}", "cat /etc/os-release"],
                 h.ssh(s, "grep -E '^(ID|PRETTY_NAME)=' /etc/os-release").stdout)
        grub_lines = [ln.split("] ", 1)[-1] for ln in h.console(s).splitlines() if "GRUB:" in ln]
        if grub_lines:
            demo.line(f"{s} console: {grub_lines[-1]}")
        h.ipmitool(s, "chassis", "power", "cycle")
        h.wait_state(s, "running", timeout=30)
        h.wait_ssh(s, timeout=30)
        demo.line(f"next power cycle: next_entry was used up, saved_entry=home boots the home OS again: "
                  f"{h.ssh(s, 'hostname').stdout.strip()}")

    if h.boards:
        b = h.boards[0]
        demo.step(f"{b} booted over TFTP (its console)")
        node = h.node(b)
        lines = Path(node["console"]).read_text(errors="replace").splitlines()
        last_on = max([i for i, ln in enumerate(lines) if "power on" in ln] or [0])
        for line in lines[last_on:]:
            if any(k in line for k in ("TFTP", "Filename", "Bytes transferred", "Starting kernel", "Mounted root")):
                demo.say("             " + line)
        demo.line(f"TFTP root {node.get('tftp_root')}, NFS export {node.get('nfs_export')}")

    demo.step("ssh into every node with the lab key")
    for name in h.servers + h.boards:
        try:
            out = h.ssh(name, "echo \"$(hostname): $(. /etc/os-release; echo $PRETTY_NAME)\"", timeout=20).stdout
            demo.line(f"ssh root@{h.node(name)['ip']}  ->  {out.strip()}")
        except LabError as exc:
            demo.line(f"ssh {name}: {exc}")
