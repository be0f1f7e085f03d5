"""A corpus of bad input, applied to every remote the way OpenNebula's drivers run them.

The node holds a running VM 5 when each case runs. For every case the remote must exit
non-zero with exactly one line and no traceback, must not echo the offending input, and must
change nothing: not the state database (nodes and history), not the machine (the fake kind's
machine file), not a file of the front-end tree (bmm's own log aside).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import textwrap

import pytest

from tests.onemock import OpenNebula, drv_action, vm_xml
from tests.support import stop_monitor_daemon
from vmm_drivers.base import TM_ACTIONS, VMM_ACTIONS

HOST = "fake01"
VM = 5
HUGE = "9" * 25                       # overflows SQLite's INTEGER
SECRET = "TOPSECRET-hunter2"

BAD_IDS = {
    "huge": HUGE,
    "arabic-indic digit": "\u0669",
    "underscore": "0_9",
    "trailing newline": "9\n",
    "leading space": " 9",
    "plus sign": "+9",
    "negative": "-1",
    "leading zero": "09",
    "empty": "",
    "hex": "0x9",
    "float": "9.0",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    inventory = tmp / "nodes.toml"
    inventory.write_text(textwrap.dedent("""\
        [nodes.fake01]
        kind = "fake"
        arch = "x86_64"
        cpus = 8
        memory_mb = 4096
        disk_gb = 100
        macs = ["52:54:00:00:00:01"]
        ip = "192.0.2.10"
        [nodes.fake01.power]
        driver = "manual"
        """))
    one = OpenNebula(tmp / "one", inventory)
    assert one.prolog(VM, HOST).returncode == 0
    assert one.deploy(vm_xml(VM, HOST), HOST, VM, tmp / "deployment.0").returncode == 0
    # a second VM's files, for "another VM's place" cases
    one.context_sh(6, "A='1'\n")
    (one.root / "vms" / "6" / "token.txt").write_text("token of VM 6\n")
    (one.datastores / "100" / "6").mkdir(parents=True, exist_ok=True)
    outside = tmp / "outside.img"
    outside.write_bytes(b"\0" * 4096)
    (one.datastores / "101").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, one.datastores / "101" / "escape")
    yield one, tmp
    stop_monitor_daemon(one.state_dir)


def snapshot(one) -> dict:
    """Everything a bad input must not change."""
    files = {}
    for path in sorted(one.root.rglob("*")):
        if path.is_file() and path.name not in ("bmm.log", "state.db-wal", "state.db-shm") \
                and "__pycache__" not in path.parts and path.suffix != ".lock":
            files[str(path.relative_to(one.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    conn = sqlite3.connect(one.state_dir / "state.db")
    try:
        files["<nodes>"] = repr(conn.execute("SELECT * FROM nodes ORDER BY name").fetchall())
        files["<history>"] = repr(conn.execute("SELECT * FROM node_history ORDER BY id").fetchall())
    finally:
        conn.close()
    return files


def assert_refused(one, before, ex, *, quoted: tuple[str, ...] = ()):
    lines = [line for line in ex.stderr.splitlines() if line.strip()]
    assert ex.returncode != 0, ex
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert "Traceback" not in ex.stderr and ex.stdout == ""
    for text in quoted:
        assert text not in lines[0], f"the error quotes the input {text!r}: {lines[0]}"
    assert snapshot(one) == before, "a refused input changed something"
    return lines[0]


# ------------------------------------------------------------------------------ VMM remotes

def _vmm_cases(one, tmp):
    good = drv_action(vm_xml(VM, HOST), HOST, f"bmm-{HOST}-{VM}")
    b64 = lambda text: base64.b64encode(text.encode() if isinstance(text, str) else text)  # noqa: E731
    cases = {}
    for name, bad in BAD_IDS.items():
        cases[f"vm id {name}"] = ([f"bmm-{HOST}-{VM}", HOST, bad, HOST], b64(good), "the VM id argument")
    cases.update({
        "too few arguments": ([HOST, str(VM)], b64(good), "expects"),
        "hosts differ": ([f"bmm-{HOST}-{VM}", HOST, str(VM), "other"], b64(good), "differ"),
        "host with shell syntax": (["d", "a;rm -rf /", str(VM), "a;rm -rf /"], b64(good), "not a host name"),
        "host as an option": (["d", "-oProxyCommand=x", str(VM), "-oProxyCommand=x"], b64(good), "not a host name"),
        "empty stdin": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST], b"", "is empty"),
        "not base64": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST], b"%%% not base64 %%%", "neither XML nor base64"),
        "base64 of text": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST], b64("hello " + SECRET), "not to XML"),
        "broken XML": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST], b64(f"<VM><ID>5</ID><{SECRET}>"), "not valid XML"),
        "entity bomb": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                        b64('<!DOCTYPE x [<!ENTITY a "aaaa">]><VM><ID>5</ID><NAME>&a;</NAME></VM>'), "DOCTYPE"),
        "external entity": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                            b64('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><VM><ID>5</ID><NAME>&e;</NAME></VM>'),
                            "DOCTYPE"),
        "XML names another VM": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                                 b64(drv_action(vm_xml(6, HOST), HOST)), "describes another VM"),
        "XML names another host": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                                   b64(drv_action(vm_xml(VM, "other"), "other")), "names another host"),
        "XML VM id overflows": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                                b64(drv_action(vm_xml(VM, HOST).replace(f"<ID>{VM}</ID>", f"<ID>{HUGE}</ID>"), HOST)),
                                "VM ID"),
        "XML VM id not ASCII": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                                b64(drv_action(vm_xml(VM, HOST).replace(f"<ID>{VM}</ID>", "<ID>\u0665</ID>"), HOST)),
                                "VM ID"),
        "XML disk size not a number": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST],
                                       b64(drv_action(vm_xml(VM, HOST, disks=f"<DISK><DISK_ID>0</DISK_ID><SIZE>{SECRET}</SIZE></DISK>"), HOST)),
                                       "SIZE"),
        "oversized stdin": ([f"bmm-{HOST}-{VM}", HOST, str(VM), HOST], b"A" * (33 * 2**20), "larger than"),
        "unknown host": (["d", "ghost", str(VM), "ghost"], b64(drv_action(vm_xml(VM, "ghost"), "ghost")),
                         "not in the bmm inventory"),
    })
    return cases


VMM_REMOTES = ("deploy", "shutdown", "cancel", "reboot", "reset", "poll")


@pytest.mark.parametrize("action", VMM_REMOTES)
def test_vmm_corpus(world, action):
    one, tmp = world
    cases = _vmm_cases(one, tmp)
    before = snapshot(one)
    for name, (args, stdin, message) in cases.items():
        if action == "deploy" and args[0].startswith("bmm-"):
            args = [str(tmp / "deployment.x")] + args[1:]
        ex = one.vmm(action, args, None, raw_stdin=stdin)
        line = assert_refused(one, before, ex, quoted=(SECRET, HUGE, "rm -rf", "ProxyCommand"))
        assert message in line, f"{action} / {name}: {line}"


def test_every_vmm_remote_is_covered():
    """Unsupported VMM actions fail before reading input (test_vmm_protocol); the rest are here."""
    from vmm_drivers.entry import VMM_UNSUPPORTED
    assert set(VMM_ACTIONS) - VMM_UNSUPPORTED - set(VMM_REMOTES) == {"prereconfigure", "reconfigure"}


@pytest.mark.parametrize("action", ["prereconfigure", "reconfigure"])
def test_reconfigure_corpus(world, action):
    one, tmp = world
    good = base64.b64encode(drv_action(vm_xml(VM, HOST), HOST).encode())
    before = snapshot(one)
    extra = ["/x.iso"] if action == "reconfigure" else []
    for bad in BAD_IDS.values():
        ex = one.vmm(action, ["d", "hdb", *extra, bad, HOST], None, raw_stdin=good)
        assert_refused(one, before, ex, quoted=(HUGE,))


# ------------------------------------------------------------------------------ TM remotes

def _tm_cases(one, tmp):
    ds = one.datastores
    image = one.register_image(tmp / "outside.img")
    disk = f"{HOST}:{one.disk(VM, 0)}"
    ctx = one.context_sh(VM, f"A='1'\nPASSWORD {SECRET}\n")          # malformed line 2
    one.context_sh(7, "A='" + "x" * (5 * 2**20) + "'\n")                   # too big, VM 7
    big_ctx = str(one.root / "vms" / "7" / "context.sh")
    zero_dir = one.root / "vms" / "8"
    zero_dir.mkdir(parents=True, exist_ok=True)
    if not (zero_dir / "context.sh").exists():
        os.symlink("/dev/zero", zero_dir / "context.sh")
    fifo_dir = one.root / "vms" / "9"
    fifo_dir.mkdir(parents=True, exist_ok=True)
    if not (fifo_dir / "context.sh").exists():
        os.mkfifo(fifo_dir / "context.sh")
    good_ctx = str(one.context_sh(10, "A='1'\n"))
    cases = {
        # clone / ln
        "clone source outside the datastores": ("clone", ["fe:/etc/shadow", disk, str(VM), "101"], "not an image of datastore"),
        "clone source with ..": ("clone", [f"fe:{ds}/101/../../../etc/shadow", disk, str(VM), "101"], "'..'"),
        "clone source in another datastore": ("clone", [f"fe:{image.replace('/101/', '/102/')}", disk, str(VM), "101"],
                                              "not in datastore 101"),
        "clone source symlinks out": ("clone", [f"fe:{ds}/101/escape", disk, str(VM), "101"], "leads out of datastore"),
        "clone source relative": ("clone", ["fe:img", disk, str(VM), "101"], "not <host>:<absolute path>"),
        "clone destination of another VM": ("clone", [f"fe:{image}", f"{HOST}:{one.disk(6, 0)}", str(VM), "101"],
                                            "another VM"),
        "clone destination not a disk": ("clone", [f"fe:{image}", f"{HOST}:{one.sysdir(VM)}", str(VM), "101"],
                                         "not a disk.<n> path"),
        "clone destination outside": ("clone", [f"fe:{image}", f"{HOST}:/etc/disk.0", str(VM), "101"],
                                      "is not <datastore location>"),
        "clone destination with ..": ("clone", [f"fe:{image}", f"{HOST}:{one.sysdir(VM)}/../6/disk.0", str(VM), "101"],
                                      "'..'"),
        "clone vm id overflows": ("clone", [f"fe:{image}", disk, HUGE, "101"], "the VM id argument"),
        "clone ds id not ASCII": ("clone", [f"fe:{image}", disk, str(VM), "\u0661\u0660\u0661"], "the datastore id"),
        "ln source outside": ("ln", ["fe:/etc/shadow", disk, str(VM), "101"], "not an image of datastore"),
        # volatile disks
        "mkswap negative size": ("mkswap", ["-5", disk, str(VM), "100"], "the size argument"),
        "mkswap zero size": ("mkswap", ["0", disk, str(VM), "100"], "greater than 0"),
        "mkswap huge size": ("mkswap", [HUGE, disk, str(VM), "100"], "the size argument"),
        "mkswap vm id overflows": ("mkswap", ["512", disk, HUGE, "100"], "the VM id argument"),
        "mkimage negative size": ("mkimage", ["-5", "raw", disk, str(VM), "100"], "the size argument"),
        "mkimage bad format": ("mkimage", ["512", "raw;reboot", disk, str(VM), "100"], "format"),
        "mkimage vm id overflows": ("mkimage", ["512", "raw", disk, HUGE, "100"], "the VM id argument"),
        # context
        "context.sh outside the vms dir": ("context", ["/etc/passwd", f"{HOST}:{one.disk(VM, 1)}", str(VM), "100"],
                                           "context.sh is not"),
        "context.sh of another VM": ("context", [good_ctx, f"{HOST}:{one.disk(VM, 1)}", str(VM), "100"],
                                     "context.sh is not"),
        "context.sh malformed, with a secret": ("context", [str(ctx), f"{HOST}:{one.disk(VM, 1)}", str(VM), "100"],
                                                "context.sh line 2"),
        "context.sh too big": ("context", [big_ctx, f"{HOST}:{one.disk(7, 1)}", "7", "100"], "more than the"),
        "context.sh is /dev/zero": ("context", [str(zero_dir / "context.sh"), f"{HOST}:{one.disk(8, 1)}", "8", "100"],
                                    "context.sh"),
        "context.sh is a FIFO": ("context", [str(fifo_dir / "context.sh"), f"{HOST}:{one.disk(9, 1)}", "9", "100"],
                                 "not a regular file"),
        "context file is /dev/zero": ("context", [good_ctx, "/dev/zero", f"{HOST}:{one.disk(10, 1)}", "10", "100"],
                                      "not a regular file"),
        "context file with ..": ("context", [good_ctx, "/srv/../etc/shadow", f"{HOST}:{one.disk(10, 1)}", "10", "100"],
                                 "'..'"),
        "context file renamed to a path": ("context", [good_ctx, "/etc/hostname:'../../x'",
                                                       f"{HOST}:{one.disk(10, 1)}", "10", "100"], "invalid name"),
        "context file is a URL": ("context", [good_ctx, "http://evil/x", f"{HOST}:{one.disk(10, 1)}", "10", "100"], "URL"),
        "context token of another VM": ("context", [good_ctx, str(one.root / "vms" / "6" / "token.txt"),
                                                    f"{HOST}:{one.disk(10, 1)}", "10", "100"], "another VM"),
        "context destination of another VM": ("context", [good_ctx, f"{HOST}:{one.disk(6, 1)}", "10", "100"],
                                              "another VM"),
        # delete / mv
        "delete outside the datastores": ("delete", [f"{HOST}:/etc", str(VM), "100"], "is not <datastore location>"),
        "delete another VM's dir": ("delete", [f"{HOST}:{one.sysdir(6)}", str(VM), "100"], "another VM"),
        "delete with ..": ("delete", [f"{HOST}:{one.sysdir(VM)}/..", str(VM), "100"], "'..'"),
        "delete a disk of another VM": ("delete", [f"{HOST}:{one.disk(6, 0)}", str(VM), "100"], "another VM"),
        "delete vm id overflows": ("delete", [f"{HOST}:{one.sysdir(VM)}", HUGE, "100"], "the VM id argument"),
        "delete odd disk name": ("delete", [f"{HOST}:{one.sysdir(VM)}/disk.0x", str(VM), "100"], "disk.<n>"),
        "delete host with shell syntax": ("delete", [f"a$(id):{one.sysdir(VM)}", str(VM), "100"], "not <host>:"),
        "mv another VM's dir": ("mv", [f"{HOST}:{one.sysdir(6)}", f"fe:{one.sysdir(6)}", str(VM), "100"], "another VM"),
        "failmigrate with ..": ("failmigrate", [HOST, HOST, f"{one.sysdir(VM)}/../6", str(VM), "100"], "'..'"),
    }
    for name, bad in BAD_IDS.items():
        cases[f"delete vm id {name}"] = ("delete", [f"{HOST}:{one.sysdir(VM)}", bad, "100"], "the VM id argument")
        cases[f"clone ds id {name}"] = ("clone", [f"fe:{image}", disk, str(VM), bad], "the datastore id argument")
    return cases


def test_tm_corpus(world):
    one, tmp = world
    cases = _tm_cases(one, tmp)
    before = snapshot(one)
    for name, (action, args, message) in cases.items():
        ex = one.tm(action, args)
        line = assert_refused(one, before, ex, quoted=(SECRET, HUGE, "/etc/shadow", "$(id)", "reboot"))
        assert message in line, f"{name}: {line}"


def test_every_tm_remote_with_arguments_is_covered(world):
    one, tmp = world
    from vmm_drivers.entry import TM_UNSUPPORTED
    covered = {action for action, _, _ in _tm_cases(one, tmp).values()}
    assert set(TM_ACTIONS) - TM_UNSUPPORTED - covered == {"monitor", "monitor_ds"}


# ------------------------------------------------------------------------------ IM control

CONFIG = ("<MONITOR_CONFIGURATION><NETWORK><MONITOR_ADDRESS>{address}</MONITOR_ADDRESS><PORT>{port}</PORT>"
          "</NETWORK><PROBES_PERIOD><STATE_VM>{period}</STATE_VM></PROBES_PERIOD></MONITOR_CONFIGURATION>")


def test_im_corpus(world):
    """run_monitord_client merges stderr into stdout: the merged output is one clean line, and
    no host is registered, no daemon started."""
    one, _ = world
    good = dict(address="127.0.0.1", port="4124", period="5")
    cases = {
        "port too big": (["bmm", "3", HOST], dict(good, port="99999")),
        "port negative": (["bmm", "3", HOST], dict(good, port="-1")),
        "port zero": (["bmm", "3", HOST], dict(good, port="0")),
        "port not a number": (["bmm", "3", HOST], dict(good, port=SECRET)),
        "address with shell syntax": (["bmm", "3", HOST], dict(good, address="1.2.3.4;rm -rf /")),
        "address garbage": (["bmm", "3", HOST], dict(good, address=SECRET + "!")),
        "period not a number": (["bmm", "3", HOST], dict(good, period="5s")),
        "host id negative": (["bmm", "-1", HOST], good),
        "host id overflows": (["bmm", HUGE, HOST], good),
        "host id not ASCII": (["bmm", "\u0663", HOST], good),
        "host name with shell syntax": (["bmm", "3", "x;id"], good),
        "unknown host": (["bmm", "3", "ghost"], good),
        "too few arguments": (["bmm", "3"], good),
    }
    before = snapshot(one)
    for name, (args, values) in cases.items():
        ex = one.im(args, CONFIG.format(**values))
        merged = (ex.stdout + ex.stderr).strip()
        assert ex.returncode != 0, name
        assert len(merged.splitlines()) == 1 and "Traceback" not in merged, f"{name}: {merged!r}"
        for text in (SECRET, HUGE, "rm -rf", "99999"):
            assert text not in merged, f"{name} quotes its input: {merged}"
        assert snapshot(one) == before, name
        assert not (one.state_dir / "monitor" / "hosts").exists() or \
            not list((one.state_dir / "monitor" / "hosts").iterdir()), name
