"""The real VMM and TM scripts, driven exactly as OpenNebula's exec drivers run them."""

import base64
import os

import pytest

from tests.fakekind import read_machine
from tests.onemock import drv_action, vm_xml
from vmm_drivers.base import TM_ACTIONS, VMM_ACTIONS
from vmm_drivers.entry import TM_UNSUPPORTED, VMM_UNSUPPORTED

HOST = "fake01"


def _config(one):
    from bmm.config import load_config
    return load_config(one.remotes / "etc" / "bmm" / "bmm.toml")


def _machine(one):
    return read_machine(_config(one), HOST)


def _record(one):
    from bmm.state import open_store
    return open_store(config=_config(one)).get(HOST)


def assert_one_line_failure(ex, *, contains: str = ""):
    assert ex.returncode != 0, ex
    assert "Traceback" not in ex.stderr
    lines = [l for l in ex.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert ex.stdout == ""
    # the same FAILURE text under 7.x and 6.10
    assert ex.failure_text_7 == ex.failure_text_610 == lines[0]
    if contains:
        assert contains in lines[0], lines[0]


def test_every_action_has_an_executable(one):
    for action in VMM_ACTIONS:
        assert os.access(one.remotes / "vmm" / "bmm" / action, os.X_OK), action
    for action in TM_ACTIONS:
        assert os.access(one.remotes / "tm" / "bmm" / action, os.X_OK), action
    assert os.access(one.remotes / "im" / "bmm.d" / "monitord-client_control.sh", os.X_OK)


def test_deploy_shutdown_cancel_round_trip(one, tmp_path):
    vm = vm_xml(42, HOST)
    assert one.prolog(42, HOST).returncode == 0
    ex = one.deploy(vm, HOST, 42, tmp_path / "deployment.0")
    assert ex.returncode == 0, ex.stderr
    assert ex.stdout == "bmm-fake01-42\n"          # exactly one line: the deploy id
    assert ex.reply("DEPLOY", 42) == "DEPLOY SUCCESS 42 bmm-fake01-42"
    assert ("I", "42", "booting VM 42") in ex.log_lines   # logged to the VM log (7.x)
    assert _machine(one)["power"] == "on"

    ex = one.simple("poll", drv_action(vm, HOST, "bmm-fake01-42"), "bmm-fake01-42", HOST, 42)
    assert ex.returncode == 0 and ex.stdout.strip() == "STATE=a"

    ex = one.simple("shutdown", drv_action(vm, HOST, "bmm-fake01-42"), "bmm-fake01-42", HOST, 42)
    assert ex.reply("SHUTDOWN", 42) == "SHUTDOWN SUCCESS 42 -"
    assert _machine(one)["power"] == "off"

    ex = one.deploy(vm, HOST, 42, tmp_path / "deployment.1")       # resume from poweroff
    assert ex.reply("DEPLOY", 42) == "DEPLOY SUCCESS 42 bmm-fake01-42"

    ex = one.simple("cancel", drv_action(vm, HOST, "bmm-fake01-42"), "bmm-fake01-42", HOST, 42)
    assert ex.reply("CANCEL", 42) == "CANCEL SUCCESS 42 -"
    machine = _machine(one)
    assert machine["power"] == "off"
    assert machine["calls"] == ["clone", "deploy", "shutdown", "deploy", "cancel"]

    ex = one.tm("delete", [f"{HOST}:{one.sysdir(42)}", "42", "100"])
    assert ex.returncode == 0, ex.stderr
    assert _machine(one)["disks"] == []
    assert _record(one).state == "available" and _record(one).vm_id is None


def test_deploy_of_a_second_vm_is_refused_with_one_line(one, tmp_path):
    assert one.prolog(1, HOST).returncode == 0
    assert one.deploy(vm_xml(1, HOST), HOST, 1, tmp_path / "d1").returncode == 0
    ex = one.deploy(vm_xml(2, HOST), HOST, 2, tmp_path / "d2")
    assert_one_line_failure(ex, contains="node fake01: holds VM 1; refusing VM 2")
    assert ex.reply("DEPLOY", 2) == "DEPLOY FAILURE 2 node fake01: holds VM 1; refusing VM 2 (one instance per machine)"
    assert ex.reply("DEPLOY", 2, major=6) == ex.reply("DEPLOY", 2, major=7)
    ex = one.prolog(2, HOST)
    assert_one_line_failure(ex, contains="node fake01: holds VM 1; refusing VM 2")
    assert _machine(one)["calls"] == ["clone", "deploy"]


@pytest.mark.parametrize("action", sorted(VMM_UNSUPPORTED))
def test_unsupported_vmm_actions_fail_at_once(one, action):
    ex = one.vmm(action, ["bmm-fake01-7", HOST, "7", HOST], drv_action(vm_xml(7, HOST), HOST))
    assert_one_line_failure(ex, contains="is not supported on bare metal")


@pytest.mark.parametrize("action", sorted(TM_UNSUPPORTED))
def test_unsupported_tm_actions_fail_at_once(one, action):
    ex = one.tm(action, [f"{HOST}:{one.disk(7, 0)}", "0", "7", "100"])
    assert_one_line_failure(ex, contains="is not supported on bare metal")


def test_undeploy_mv_fails_clearly(one):
    ex = one.tm("mv", [f"{HOST}:{one.disk(7, 0)}", f"fe:{one.disk(7, 0)}", "7", "100"])
    assert_one_line_failure(ex, contains="undeploy and cold migration (mv) is not supported on bare metal")


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<VMM_DRIVER_ACTION_DATA><HOST>fake01</HOST><VM><ID>9</ID><NAME>&lol3;</NAME></VM></VMM_DRIVER_ACTION_DATA>"""

BAD_INPUTS = {
    "empty stdin": (b"", "is empty"),
    "invalid base64": (b"this is not base64 !!!", "neither XML nor base64"),
    "base64 of non-XML": (base64.b64encode(b"hello world"), "not to XML"),
    "non-XML": (base64.b64encode(b"<VM><ID>9</ID>"), "not valid XML"),
    "entity bomb": (base64.b64encode(BOMB.encode()), "DOCTYPE or entity declaration"),
    "VM without ID": (base64.b64encode(drv_action("<VM><NAME>x</NAME></VM>", HOST).encode()), "the VM has no ID"),
}


@pytest.mark.parametrize("action", ["deploy", "shutdown", "cancel", "reboot", "reset", "poll"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_to_every_vmm_remote(one, tmp_path, action, case):
    raw, message = BAD_INPUTS[case]
    first = str(tmp_path / "deployment.0") if action == "deploy" else "bmm-fake01-9"
    before = sorted(p.name for p in one.state_dir.iterdir())
    ex = one.vmm(action, [first, HOST, "9", HOST], None, raw_stdin=raw)
    assert_one_line_failure(ex, contains=message)
    assert sorted(p.name for p in one.state_dir.iterdir()) == before   # nothing written


@pytest.mark.parametrize("action", ["deploy", "shutdown", "cancel", "poll"])
def test_unknown_host(one, tmp_path, action):
    ex = one.vmm(action, ["x", "ghost", "9", "ghost"], drv_action(vm_xml(9, "ghost"), "ghost"))
    assert_one_line_failure(ex, contains="host ghost is not in the bmm inventory")


@pytest.mark.parametrize("action", ["deploy", "shutdown", "poll"])
def test_host_name_with_shell_metacharacters_is_refused_as_a_name(one, tmp_path, action):
    evil = "n1;touch${IFS}PWNED`id`$(id)"
    ex = one.vmm(action, ["x", evil, "9", evil], drv_action(vm_xml(9, evil), evil))
    assert_one_line_failure(ex, contains="the host argument is not a host name")
    assert evil not in ex.stderr
    assert not list(one.root.rglob("PWNED*"))


def test_tm_bad_arguments(one):
    for action, args, message in [
        ("clone", [], "expects 4 arguments"),
        ("clone", ["nocolon", f"{HOST}:{one.disk(1, 0)}", "1", "1"], "the source argument is not <host>:<absolute path>"),
        ("delete", [f"{HOST}:{one.sysdir(1)}", "notanumber", "100"], "the VM id argument is not a non-negative ASCII decimal"),
        ("delete", [f"ghost:{one.sysdir(1)}", "1", "100"], "host ghost is not in the bmm inventory"),
        ("context", ["/nonexistent/context.sh"], "context.sh [files...] dst vmid dsid"),
    ]:
        ex = one.tm(action, args)
        assert_one_line_failure(ex, contains=message)


def test_argv_and_xml_must_agree(one, tmp_path):
    ex = one.vmm("shutdown", ["d", HOST, "5", HOST], drv_action(vm_xml(6, HOST), HOST))
    assert_one_line_failure(ex, contains="argv names VM 5 but the XML describes another VM")


def test_raw_xml_on_stdin_works_for_a_person_debugging(one):
    """A person pipes a plain XML file instead of base64."""
    vm = vm_xml(3, HOST)
    assert one.prolog(3, HOST).returncode == 0
    assert one.deploy(vm, HOST, 3, one.root / "d3").returncode == 0
    ex = one.vmm("poll", ["bmm-fake01-3", HOST, "3", HOST], None, raw_stdin=vm.encode())
    assert ex.returncode == 0 and ex.stdout.strip() == "STATE=a"


def test_traceback_only_with_bmm_debug(one):
    env = dict(one.env, BMM_DEBUG="1")
    ex = one.vmm("poll", ["x", "ghost", "9", "ghost"], drv_action(vm_xml(9, "ghost"), "ghost"), env=env)
    assert ex.returncode != 0 and "Traceback" in ex.stderr


@pytest.mark.parametrize("version,major", [("7.0.0", 7), ("6.10.5", 6), (None, 7), (None, 6)])
def test_failure_text_is_the_cause_under_7_and_6_10(tmp_path, inventory, version, major):
    """An action that logged progress and then failed: OpenNebula 7.x gets the log line in the
    VM log and the cause as FAILURE text; 6.10 (whole stderr) gets exactly the cause. With no
    VERSION file, bmm writes only the cause, which is right for both."""
    from tests.fakekind import write_machine
    from tests.onemock import OpenNebula
    one = OpenNebula(tmp_path / "one", inventory, version=version)
    assert one.prolog(4, HOST).returncode == 0
    assert one.deploy(vm_xml(4, HOST), HOST, 4, tmp_path / "d4").returncode == 0
    machine = _machine(one)
    write_machine(_config(one), HOST, dict(machine, power="off"))       # off behind bmm's back
    ex = one.simple("reset", drv_action(vm_xml(4, HOST), HOST, "d"), "d", HOST, 4)
    assert ex.reply("RESET", 4, major=major) == "RESET FAILURE 4 node fake01: is powered off; nothing to reset"
    assert "Traceback" not in ex.stderr
    if version and version.startswith("7"):
        assert ("I", "4", "resetting VM 4") in ex.log_lines
    else:
        assert ex.stderr.count("\n") == 1


def test_remotes_find_their_config_without_environment(one, tmp_path):
    """oned runs drivers with a bare environment: no BMM_CONFIG, config found beside the remotes."""
    assert "BMM_CONFIG" not in one.env and "HOME" not in one.env
    assert one.prolog(11, HOST).returncode == 0
    ex = one.deploy(vm_xml(11, HOST), HOST, 11, tmp_path / "d11")
    assert ex.returncode == 0, ex.stderr


def test_tm_names_its_own_meaning_of_shared_action_names(one):
    """TM restore is a backup restore and TM resize a disk resize, not their VMM namesakes."""
    ex = one.tm("restore", [f"{HOST}:{one.sysdir(7)}", "7", "1", "0", "0"])
    assert_one_line_failure(ex, contains="backup restore is not supported on bare metal")
    ex = one.tm("resize", [f"{HOST}:{one.disk(7, 0)}", "2048", "7", "100"])
    assert_one_line_failure(ex, contains="disk resize is not supported on bare metal")


def test_a_finished_prolog_is_a_stable_state_not_an_interrupted_one(one):
    """Between the TM prolog and the VMM deploy no bmm process runs: the node must not look
    like an action died (`bmm nodes recover` once turned every such node into error)."""
    from bmm.state import open_store
    assert one.prolog(12, HOST).returncode == 0
    store = open_store(config=_config(one))
    assert store.get(HOST).state == "provisioned" and not store.get(HOST).interrupted
    assert store.recover() == []
    assert store.get(HOST).state == "provisioned" and store.get(HOST).vm_id == 12
