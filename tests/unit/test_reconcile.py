"""`bmm one reconcile`'s findings against a stand-in for oned's host and VM pools, every kind of
drift once, with a real state database. The real oned drives the leaked-machine case and its
--fix in tests/oned/test_where_oned_differs.py."""

from types import SimpleNamespace

import pyone
import pytest

from bmm.opennebula.reconcile import findings
from bmm.state import StateStore
from tests.unit.test_state import force

S = pyone.VM_STATE


def host(name: str, vm_mad: str = "bmm"):
    return SimpleNamespace(NAME=name, VM_MAD=vm_mad)


def vm(vm_id: int, state, on: str | None):
    history = [SimpleNamespace(HOSTNAME=on)] if on else []
    return SimpleNamespace(ID=vm_id, STATE=int(state), HISTORY_RECORDS=SimpleNamespace(HISTORY=history))


class Pools:
    def __init__(self, hosts, vms):
        self.hostpool = SimpleNamespace(info=lambda: SimpleNamespace(HOST=hosts))
        self.vmpool = SimpleNamespace(infoextended=lambda *a: SimpleNamespace(VM=vms))


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.db")


def run(hosts, vms, store, names=("n1", "n2")):
    cleaned = []
    inventory = [SimpleNamespace(name=n) for n in names]
    found = findings(Pools(hosts, vms), inventory, store, cleanup=lambda node, vm_id: cleaned.append((node.name, vm_id)))
    return found, cleaned


def test_agreement_is_no_finding(store):
    force(store, "n1", "active", vm_id=7)
    found, _ = run([host("n1"), host("n2")], [vm(7, S.ACTIVE, "n1"), vm(8, S.PENDING, None)], store)
    assert found == []


@pytest.mark.parametrize("oned_vm, where", [
    (None, "does not exist any more"),
    (vm(7, S.DONE, "n1"), "does not exist any more"),
    (vm(7, S.ACTIVE, "n2"), "runs on host n2"),
])
def test_a_node_holding_a_vm_oned_does_not_have_there_is_leaked_and_only_fix_cleans_it(store, oned_vm, where):
    force(store, "n1", "active", vm_id=7)
    vms = [oned_vm] if oned_vm else []
    found, cleaned = run([host("n1"), host("n2")], vms, store)
    leaked = [f for f in found if f.node == "n1"]
    assert len(leaked) == 1 and leaked[0].vm_id == 7 and where in leaked[0].problem, found
    assert cleaned == [], "finding a leak must change nothing"
    leaked[0].fix()
    assert cleaned == [("n1", 7)]


def test_a_vm_whose_node_does_not_hold_it_is_named_with_advice_and_no_fix(store):
    force(store, "n2", "active", vm_id=9)
    found, _ = run([host("n1"), host("n2")], [vm(9, S.ACTIVE, "n2"), vm(5, S.POWEROFF, "n1")], store)
    lost = [f for f in found if f.vm_id == 5]
    assert len(lost) == 1 and lost[0].node == "n1" and "the node is available" in lost[0].problem, found
    assert lost[0].fix is None and "onevm recover --delete 5" in lost[0].advice


def test_a_pending_vm_already_placed_on_an_available_node_is_not_drift(store):
    """Between the scheduler's placement and the deploy's first step the node is still available."""
    found, _ = run([host("n1"), host("n2")], [vm(5, S.PENDING, "n1")], store)
    assert found == []


def test_hosts_missing_on_either_side_are_named_and_other_drivers_hosts_are_left_alone(store):
    found, _ = run([host("n1"), host("ghost"), host("kvm1", vm_mad="kvm")], [], store)
    assert sorted(str(f) for f in found) == [
        "node ghost: is a bmm host in OpenNebula but not in the inventory "
        "(add it to the inventory or `onehost delete` it)",
        "node n2: has no OpenNebula host (run `bmm one register`)",
    ]
    assert all(f.fix is None for f in found)
