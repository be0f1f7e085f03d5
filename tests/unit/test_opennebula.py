"""Pure logic of the protocol layer: template syntax, input decoding, VM XML, replies."""

import base64
import io

import pytest

from bmm.errors import BmmError
from bmm.opennebula import driver_input, monitor, template
from bmm.opennebula.reply import Reporter, print_deploy_id
from bmm.opennebula.vm import parse_driver_action
from bmm.opennebula.xmlsafe import InputError, parse_xml

VALUES = ["plain", 'with "quotes"', "back\\slash", "new\nline", "a=b,c]d[e#f", " spaced ",
          "tab\there", "", "ünïcödé", 'mix \\n "q" \n\\x']


@pytest.mark.parametrize("value", VALUES)
def test_template_round_trips_through_opennebula_lexing(value):
    text = template.render([("KEY", value), ("VEC", {"A": value, "B": "x"}), ("AFTER", "y")])
    assert template.parse(text) == [("KEY", value), ("VEC", {"A": value, "B": "x"}), ("AFTER", "y")]


def test_backslash_before_quote_or_at_the_end_cannot_swallow_the_next_attribute():
    text = template.render([("A", "ends\\"), ("B", 'q\\"x'), ("C", "z")])
    parsed = dict(template.parse(text))
    assert parsed["C"] == "z"
    assert parsed["A"] == "ends" + template.SAFE_BACKSLASH
    assert parsed["B"] == "q" + template.SAFE_BACKSLASH + '"x'


def test_template_rejects_bad_names():
    with pytest.raises(BmmError):
        template.single("BAD KEY", "x")


def test_vm_blocks():
    block = monitor.vm_monitor_block(42, "bmm-n1-42", {"CPU": 1.5, "MEMORY": 1024})
    (key, vm), = template.parse(block)
    assert key == "VM" and vm["ID"] == "42" and vm["DEPLOY_ID"] == "bmm-n1-42"
    assert base64.b64decode(vm["MONITOR"]).decode() == 'CPU="1.5"\nMEMORY="1024"\n'
    assert template.parse(monitor.vm_state_block(7, "d", "POWEROFF")) == [("VM", {"ID": "7", "DEPLOY_ID": "d", "STATE": "POWEROFF"})]
    with pytest.raises(ValueError):
        monitor.vm_state_block(7, "d", "UNKNOWN")


def test_monitor_messages_document_has_no_whitespace():
    doc = monitor.monitor_messages({"SYSTEM_HOST": "A=\"1\"\nB=\"two words\"\n", "STATE_VM": ""}, timestamp=5)
    assert " " not in doc and "\n" not in doc
    assert doc.startswith("<MONITOR_MESSAGES><SYSTEM_HOST>") and doc.endswith("<TIMESTAMP>5</TIMESTAMP></MONITOR_MESSAGES>")


@pytest.mark.parametrize("raw,expected", [
    (b"<VM/>", b"<VM/>"),
    (b"  \n<VM/>\n", b"<VM/>"),
    (base64.b64encode(b"<VM/>"), b"<VM/>"),
    (base64.b64encode(b"<VM/>") + b"\n", b"<VM/>"),
])
def test_input_raw_or_base64(raw, expected):
    assert driver_input.decode_payload(raw) == expected


@pytest.mark.parametrize("raw,message", [
    (b"", "empty"), (b"   \n", "empty"), (b"%%%", "neither XML nor base64"),
    (b"QUJD", "not to XML"), (b"AB=C", "neither XML nor valid base64"),
])
def test_input_rejects(raw, message):
    with pytest.raises(InputError, match=message):
        driver_input.decode_payload(raw)


def test_hardened_parser_refuses_entities_and_external_references():
    with pytest.raises(InputError, match="DOCTYPE"):
        parse_xml(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><VM>&e;</VM>')
    with pytest.raises(InputError, match="more than"):
        parse_xml(b"<VM>" + b"x" * (17 * 1024 * 1024) + b"</VM>")



def test_hardened_parser_refuses_what_the_byte_check_cannot_see():
    """A DOCTYPE in UTF-16 passes the byte check; the parser itself still refuses it."""
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "aaaa">]><VM>&a;</VM>'
    with pytest.raises(InputError, match="DOCTYPE"):
        parse_xml(doc.encode("utf-16"))
    with pytest.raises(InputError, match="deeper than"):
        parse_xml(b"<a>" * 300 + b"</a>" * 300)
    with pytest.raises(InputError, match=r"not valid XML \(line 1, column \d+\)"):
        parse_xml(b"<VM>&undeclared;</VM>")


def test_hardened_parser_keeps_text_and_drops_comments():
    root = parse_xml(b"<VM><!-- note --><?pi x?><NAME><![CDATA[a<b]]></NAME><ID>7</ID></VM>")
    assert [child.tag for child in root] == ["NAME", "ID"]
    assert root.findtext("NAME") == "a<b" and root.findtext("ID") == "7"


FULL = """<VMM_DRIVER_ACTION_DATA><HOST>node01</HOST><MIGR_HOST/><DEPLOY_ID>bmm-node01-42</DEPLOY_ID>
<LOCAL_DEPLOYMENT_FILE>/var/lib/one/vms/42/deployment.0</LOCAL_DEPLOYMENT_FILE>
<TM_COMMAND>CONTEXT bmm /var/lib/one/vms/42/context.sh node01:/var/lib/one//datastores/100/42/disk.1 42 100
</TM_COMMAND>
<VM><ID>42</ID><NAME>bm-web-42</NAME><STATE>3</STATE><LCM_STATE>2</LCM_STATE><DEPLOY_ID/>
<TEMPLATE><CONTEXT><DISK_ID><![CDATA[1]]></DISK_ID><ETH0_MAC><![CDATA[02:00:0a:00:00:15]]></ETH0_MAC>
<SSH_PUBLIC_KEY><![CDATA[ssh-ed25519 AAAA alice@laptop]]></SSH_PUBLIC_KEY></CONTEXT>
<CPU><![CDATA[1]]></CPU><VCPU><![CDATA[8]]></VCPU><MEMORY><![CDATA[1024]]></MEMORY>
<DISK><CLONE><![CDATA[YES]]></CLONE><DISK_ID><![CDATA[0]]></DISK_ID><FORMAT><![CDATA[qcow2]]></FORMAT>
<SAVE><![CDATA[NO]]></SAVE><SIZE><![CDATA[20480]]></SIZE><SOURCE><![CDATA[/var/lib/one//datastores/101/5b9d]]></SOURCE>
<TM_MAD><![CDATA[bmm]]></TM_MAD><TYPE><![CDATA[FILE]]></TYPE><DATASTORE_ID>101</DATASTORE_ID></DISK>
<NIC><IP><![CDATA[10.0.0.21]]></IP><MAC><![CDATA[02:00:0a:00:00:15]]></MAC><NETWORK><![CDATA[bm-net]]></NETWORK>
<NIC_ID><![CDATA[0]]></NIC_ID><VN_MAD><![CDATA[dummy]]></VN_MAD></NIC>
<OS><ARCH><![CDATA[x86_64]]></ARCH></OS></TEMPLATE><USER_TEMPLATE><SCHED_REQUIREMENTS><![CDATA[RUNNING_VMS = 0]]></SCHED_REQUIREMENTS></USER_TEMPLATE>
<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>old</HOSTNAME><HID>1</HID><DS_ID>0</DS_ID></HISTORY>
<HISTORY><SEQ>1</SEQ><HOSTNAME>node01</HOSTNAME><HID>3</HID><DS_ID>100</DS_ID><VM_MAD>bmm</VM_MAD><TM_MAD>bmm</TM_MAD></HISTORY></HISTORY_RECORDS></VM>
</VMM_DRIVER_ACTION_DATA>"""


def test_driver_action_parses_into_read_only_objects():
    a = parse_driver_action(FULL)
    vm = a.vm
    assert (a.host, a.deploy_id, vm.vm_id, vm.name) == ("node01", "bmm-node01-42", 42, "bm-web-42")
    assert a.tm_command.startswith("CONTEXT bmm /var/lib/one/vms/42/context.sh")
    assert (vm.cpu, vm.vcpu, vm.memory_mb) == (1.0, 8, 1024)
    (disk,) = vm.disks
    assert (disk.disk_id, disk.format, disk.size_mb, disk.clone, disk.save, disk.tm_mad, disk.type) == (0, "qcow2", 20480, True, False, "bmm", "FILE")
    assert disk.source == "/var/lib/one//datastores/101/5b9d" and disk.datastore_id == 101
    (nic,) = vm.nics
    assert (nic.ip, nic.mac, nic.network, nic.vn_mad) == ("10.0.0.21", "02:00:0a:00:00:15", "bm-net", "dummy")
    assert vm.context["SSH_PUBLIC_KEY"] == "ssh-ed25519 AAAA alice@laptop"
    assert vm.os["ARCH"] == "x86_64"
    assert vm.history.hostname == "node01" and vm.history.hid == 3 and vm.history.ds_id == 100
    assert vm.user_template["SCHED_REQUIREMENTS"] == "RUNNING_VMS = 0"
    with pytest.raises(TypeError):
        vm.context["X"] = "y"
    with pytest.raises(Exception):
        vm.vm_id = 1


@pytest.mark.parametrize("xml,message", [
    ("<VMM_DRIVER_ACTION_DATA><HOST>h</HOST></VMM_DRIVER_ACTION_DATA>", "has no <VM>"),
    ("<VM><NAME>x</NAME></VM>", "has no ID"),
    ("<VM><ID>abc</ID></VM>", "VM ID is not a non-negative ASCII decimal"),
    ("<VM><ID>\u0669</ID></VM>", "VM ID is not a non-negative ASCII decimal"),
    ("<HOST><ID>1</ID></HOST>", "expected a <VMM_DRIVER_ACTION_DATA> or <VM> document"),
    ("<VM><ID>1</ID><TEMPLATE><DISK><SIZE>1</SIZE></DISK></TEMPLATE></VM>", "DISK has no DISK_ID"),
])
def test_driver_action_errors(xml, message):
    with pytest.raises(InputError, match=message):
        parse_driver_action(xml)


def test_deploy_id_is_one_nonempty_line():
    out = io.StringIO()
    print_deploy_id("bmm-node01-42", out)
    assert out.getvalue() == "bmm-node01-42\n"
    for bad in ("", "  ", "two words"):
        with pytest.raises(BmmError):
            print_deploy_id(bad, io.StringIO())


def test_reporter_holds_logs_until_success_and_drops_them_on_failure():
    err = io.StringIO()
    rep = Reporter(42, stderr=err, live=False)
    rep.info("copying image")
    assert err.getvalue() == ""
    with pytest.raises(SystemExit) as exc:
        rep.fail("node n1: BMC refused the password\nsecond line")
    assert exc.value.code == 1
    assert err.getvalue() == "node n1: BMC refused the password second line\n"
    err = io.StringIO()
    rep = Reporter(42, stderr=err, live=False)
    rep.info("copying image")
    rep.flush_logs()
    assert err.getvalue() == "INFO: 42 copying image\n"
