"""The IM control script and the monitor daemon, checked from monitord's side: every message
is decoded exactly as onemonitord does (Message::parse_from, then the template parser)."""

import base64
import time
import zlib

import pytest
from lxml import etree

from bmm.opennebula import monitor, template
from tests.monitord import Monitord

CONFIG_XML = """<MONITOR_CONFIGURATION><NETWORK><ADDRESS>::</ADDRESS><MONITOR_ADDRESS>auto</MONITOR_ADDRESS>
<PORT>{port}</PORT><THREADS>8</THREADS><PUBKEY/><PRIKEY/></NETWORK>
<PROBES_PERIOD><BEACON_HOST>1</BEACON_HOST><SYSTEM_HOST>1</SYSTEM_HOST><MONITOR_HOST>1</MONITOR_HOST>
<STATE_VM>1</STATE_VM><MONITOR_VM>1</MONITOR_VM><SYNC_STATE_VM>180</SYNC_STATE_VM></PROBES_PERIOD>
<HOST_ID>3</HOST_ID></MONITOR_CONFIGURATION>"""


@pytest.fixture
def monitord():
    m = Monitord()
    yield m
    m.close()


def test_wire_message_is_byte_exact():
    msg = monitor.WireMessage("SYSTEM_HOST", True, 3, 1795230069, 'TOTALCPU="800"\n')
    data = msg.encode()
    head, b64 = data.rsplit(b" ", 1)
    assert head == b"SYSTEM_HOST SUCCESS 3 1795230069"
    assert zlib.decompress(base64.b64decode(b64)) == b'TOTALCPU="800"\n'
    assert monitor.decode_wire(data) == msg
    assert b"\n" not in data


def test_start_monitor_answers_a_monitor_messages_document(one, monitord):
    ex = one.im(["bmm", "3", "fake01"], CONFIG_XML.format(port=monitord.port))
    try:
        assert ex.returncode == 0, ex.stderr
        assert ex.stderr == ""                    # run_monitord_client merges stderr into the XML
        # run_monitord_client does `echo ${result}`: whitespace collapses; the XML survives it
        collapsed = " ".join(ex.stdout.split())
        doc = etree.fromstring(collapsed.encode())
        assert doc.tag == "MONITOR_MESSAGES"
        assert int(doc.findtext("TIMESTAMP")) > 0
        system = dict(template.parse(base64.b64decode(doc.findtext("SYSTEM_HOST")).decode()))
        assert system["HYPERVISOR"] == "bmm"
        assert system["TOTALCPU"] == "800" and system["TOTALMEMORY"] == str(4096 * 1024)
        assert system["ARCH"] == "x86_64" and system["MODELNAME"] == "Test Machine"
        assert system["BMM_FPGA"] == "Xilinx Virtex-5 LX330"
        assert system["BMM_ACCELERATORS"] == "Convey HC-2ex"
        assert int(system["DS_LOCATION_FREE_MB"]) == 100 * 1024
        host = dict(template.parse(base64.b64decode(doc.findtext("MONITOR_HOST")).decode()))
        assert host["FREECPU"] == "800" and host["USEDCPU"] == "0"
        assert base64.b64decode(doc.findtext("BEACON_HOST")).decode().isdigit()
    finally:
        one.im(["stop", "bmm", "3", "fake01"], "")


def test_daemon_pushes_state_and_monitoring_for_the_instance(one, monitord, tmp_path):
    from tests.onemock import vm_xml
    assert one.prolog(42, "fake01").returncode == 0
    assert one.deploy(vm_xml(42, "fake01"), "fake01", 42, tmp_path / "d").returncode == 0
    ex = one.im(["bmm", "3", "fake01"], CONFIG_XML.format(port=monitord.port))
    assert ex.returncode == 0, ex.stdout + ex.stderr
    try:
        deadline = time.monotonic() + 20
        kinds = set()
        while time.monotonic() < deadline and not {"STATE_VM", "MONITOR_VM", "SYSTEM_HOST", "MONITOR_HOST", "BEACON_HOST"} <= kinds:
            time.sleep(0.2)
            kinds = {m.type for _, m in monitord.messages()}
        msgs = monitord.messages()
        assert {"STATE_VM", "MONITOR_VM", "SYSTEM_HOST", "MONITOR_HOST", "BEACON_HOST"} <= kinds, kinds
        for proto, m in msgs:
            assert m.host_id == 3 and m.success
            assert proto == ("tcp" if m.type == "STATE_VM" else "udp")
        state = next(m for _, m in msgs if m.type == "STATE_VM")
        assert template.parse(state.payload) == [("VM", {"ID": "42", "DEPLOY_ID": "bmm-fake01-42", "STATE": "RUNNING"})]
        mon = next(m for _, m in msgs if m.type == "MONITOR_VM")
        (key, vm), = template.parse(mon.payload)
        assert key == "VM" and vm["ID"] == "42"
        inner = dict(template.parse(base64.b64decode(vm["MONITOR"]).decode()))
        assert inner["MEMORY"] == str(4096 * 1024)
        host = next(m for _, m in msgs if m.type == "MONITOR_HOST")
        assert dict(template.parse(host.payload))["USEDCPU"] == "800"   # the whole machine is in use
    finally:
        assert one.im(["stop", "bmm", "3", "fake01"], "").returncode == 0


def test_start_for_unknown_host_fails_with_one_line(one, monitord):
    ex = one.im(["bmm", "4", "ghost"], CONFIG_XML.format(port=monitord.port))
    assert ex.returncode != 0
    assert ex.stdout == "" and ex.stderr.strip().count("\n") == 0
    assert "host ghost is not in the bmm inventory" in ex.stderr


def test_encrypted_monitord_is_refused_clearly(one, monitord):
    xml = CONFIG_XML.format(port=monitord.port).replace("<PUBKEY/>", "<PUBKEY>/etc/one/pub.pem</PUBKEY>")
    ex = one.im(["bmm", "3", "fake01"], xml)
    assert ex.returncode != 0 and "PUBKEY" in ex.stderr


def test_a_bad_registration_never_stops_the_daemon_for_the_other_hosts(one, monitord):
    """A host file that is not a usable registration (here port 99999, written behind the
    control script's back) is skipped; the shared daemon keeps beaconing the good host."""
    import json
    ex = one.im(["bmm", "3", "fake01"], CONFIG_XML.format(port=monitord.port))
    assert ex.returncode == 0, ex.stdout + ex.stderr
    hosts_dir = one.state_dir / "monitor" / "hosts"
    good = json.loads((hosts_dir / "3.json").read_text())
    (hosts_dir / "4.json").write_text(json.dumps(dict(good, host_id=4, port=99999)))
    (hosts_dir / "5.json").write_text("{not json")
    try:
        monitord.raw.clear()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            beacons = [m for _, m in monitord.messages() if m.type == "BEACON_HOST"]
            if len(beacons) >= 3:
                break
            time.sleep(0.2)
        assert len(beacons) >= 3 and {m.host_id for m in beacons} == {3}
        pid = int((one.state_dir / "monitor" / "daemon.pid").read_text())
        import os
        os.kill(pid, 0)                      # still alive
    finally:
        one.im(["stop", "bmm", "3", "fake01"], CONFIG_XML.format(port=monitord.port))
