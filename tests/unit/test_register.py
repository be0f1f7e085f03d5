"""`bmm one register` against a stand-in for pyone's OneServer: the templates it makes (one per
node model, one per instance type some board serves), what --dry-run prints, and that a second
run changes nothing while objects bmm did not make are never touched."""

import tomllib
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from bmm.cli import main
from bmm.inventory import check_inventory_data
from bmm.opennebula import register, template
from bmm.tilera import import_tilera
from tests.unit.test_instance_types import LAB, board, nodes, reported, server
from tests.unit.test_tilera_import import blueprint_text
from tests.schedexpr import evaluate


class FakeOne:
    """The pools and calls register uses, as pyone returns them (TEMPLATE: a dict of strings,
    vectors as dicts)."""

    def __init__(self):
        self.objects = {"cluster": [], "datastore": [], "host": [], "template": []}
        self.calls: list[tuple] = []
        self.next_id = 100
        pool = lambda kind, key: SimpleNamespace(info=lambda *a: SimpleNamespace(**{key: list(self.objects[kind])}))  # noqa: E731
        self.clusterpool, self.datastorepool = pool("cluster", "CLUSTER"), pool("datastore", "DATASTORE")
        self.hostpool, self.templatepool = pool("host", "HOST"), pool("template", "VMTEMPLATE")
        self.cluster = SimpleNamespace(allocate=lambda name: self._add("cluster", NAME=name, TEMPLATE={}))
        self.datastore = SimpleNamespace(allocate=self._datastore, update=self._update("datastore"))
        self.host = SimpleNamespace(allocate=lambda name, im, vm, cluster: self._add(
            "host", NAME=name, IM_MAD=im, VM_MAD=vm, TEMPLATE={}))
        self.template = SimpleNamespace(allocate=self._template, update=self._update("template"))

    def _add(self, kind, **attrs) -> int:
        self.next_id += 1
        self.objects[kind].append(SimpleNamespace(ID=self.next_id, **attrs))
        self.calls.append(("allocate", kind, attrs["NAME"]))
        return self.next_id

    def _datastore(self, text, cluster_id):
        attrs = dict(template.parse(text))
        return self._add("datastore", NAME=attrs.pop("NAME"), TEMPLATE=attrs)

    def _template(self, text):
        attrs = dict(template.parse(text))
        return self._add("template", NAME=attrs["NAME"], TEMPLATE=attrs)

    def _update(self, kind):
        def update(obj_id, text, merge):
            obj = next(o for o in self.objects[kind] if o.ID == obj_id)
            attrs = dict(template.parse(text))
            obj.TEMPLATE = {**obj.TEMPLATE, **attrs} if merge else attrs
            self.calls.append(("update", kind, obj.NAME))
        return update

    def template_named(self, name):
        return next(o for o in self.objects["template"] if o.NAME == name)


def blueprint_nodes():
    text, _ = import_tilera(blueprint_text())
    found, problems = check_inventory_data(tomllib.loads(text), "nodes.toml")
    assert problems == []
    return list(found.values())


def by_name(changes):
    return {(c.kind, c.name): c for c in changes}


def test_the_blueprint_inventory_makes_tp64_and_says_which_types_it_cannot():
    one = FakeOne()
    changes = by_name(register.plan(one, blueprint_nodes()))
    tp64 = changes[("template", "tp64.8x8")]
    assert tp64.action == "create" and "10 board(s) (tilera-0, tilera-1," in tp64.detail
    for name in ("t64.8x8", "tgx.4x4", "tgx.6x6", "tgx.8x8", "tgx.10x10"):
        change = changes[("template", name)]
        assert change.action == "skip" and change.run is None
        assert "no board in the inventory serves it, not created" in change.detail
    assert changes[("template", "bmm-tilempower")].action == "create"       # the model template stays
    assert one.calls == []                                                  # plan() only reads


def test_instance_type_template_asks_for_the_whole_smallest_board():
    inv = nodes(lab1=board("lab1", **LAB), lab2=board("lab2", memory_mb=8192, cpus=60, **LAB),
                gx=board("gx", "tilegx", cpus=36, tile_grid="6x6"), s1=server("s1"))
    served, _, _ = register.instance_types.match(inv)
    tp64 = next(m for m in served if m.itype.name == "tp64.8x8")
    attrs = dict(template.parse(register.instance_type_text(tp64)))
    assert (attrs["NAME"], attrs["CPU"], attrs["VCPU"], attrs["MEMORY"]) == ("tp64.8x8", "60", "60", "8192")
    assert attrs["BMM_INSTANCE_TYPE"] == "tp64.8x8" and attrs["BMM_MANAGED"] == "YES"
    assert "TILEPro64, 64 (8x8) tiles" in attrs["DESCRIPTION"]
    assert attrs["CONTEXT"] == {"NETWORK": "YES", "SSH_PUBLIC_KEY": "$USER[SSH_PUBLIC_KEY]"}
    # the scheduler places it on either lab board, never on the TILE-Gx or the server
    hosts = {n.name: reported(n) for n in inv}
    assert {name for name, h in hosts.items() if evaluate(attrs["SCHED_REQUIREMENTS"], h)} == {"lab1", "lab2"}


def test_a_second_run_changes_nothing_and_a_changed_inventory_updates_only_bmms_templates():
    one = FakeOne()
    inv = blueprint_nodes()
    register.apply(register.plan(one, inv), say=lambda line: None)
    made = [name for verb, kind, name in one.calls if kind == "template"]
    assert sorted(made) == ["bmm-tilempower", "tp64.8x8"]
    one.calls.clear()
    again = register.plan(one, inv)
    assert [c for c in again if c.action not in ("ok", "skip")] == []
    register.apply(again, say=lambda line: None)
    assert one.calls == []

    # a board with less memory: tp64.8x8 is updated, in place
    inv2 = blueprint_nodes()[:3] + nodes(small=board("small", "tilepro64", memory_mb=4096, tile_grid="8x8"))
    changes = by_name(register.plan(one, inv2))
    assert changes[("template", "tp64.8x8")].action == "update"
    register.apply(list(changes.values()), say=lambda line: None)
    assert one.template_named("tp64.8x8").TEMPLATE["MEMORY"] == "4096"
    assert ("update", "template", "tp64.8x8") in one.calls


def test_a_template_bmm_did_not_make_is_a_conflict_and_left_alone():
    one = FakeOne()
    one._add("template", NAME="tp64.8x8", TEMPLATE={"CPU": "1", "MEMORY": "16384"})
    one.calls.clear()
    changes = register.plan(one, blueprint_nodes())
    tp64 = by_name(changes)[("template", "tp64.8x8")]
    assert tp64.action == "conflict" and tp64.run is None and "not made by bmm" in tp64.detail
    register.apply(changes, say=lambda line: None)
    assert one.template_named("tp64.8x8").TEMPLATE == {"CPU": "1", "MEMORY": "16384"}
    assert not [c for c in one.calls if c[2] == "tp64.8x8"]


def test_a_type_that_lost_its_boards_keeps_its_template():
    one = FakeOne()
    register.apply(register.plan(one, blueprint_nodes()), say=lambda line: None)
    kept = one.template_named("tp64.8x8").ID
    changes = by_name(register.plan(one, nodes(gx=board("gx", "tilegx", cpus=36, tile_grid="6x6"))))
    assert changes[("template", "tp64.8x8")].action == "skip"
    assert f"id {kept} exists and is kept" in changes[("template", "tp64.8x8")].detail
    assert changes[("template", "tgx.6x6")].action == "create"


def test_a_board_that_serves_no_type_is_named():
    changes = by_name(register.plan(FakeOne(), nodes(gx=board("gx", "tilegx", cpus=36))))
    change = changes[("node", "gx")]
    assert change.action == "skip" and "hardware.tile_grid" in change.detail


@pytest.fixture
def cli_one(monkeypatch):
    one = FakeOne()
    import bmm.opennebula.client
    monkeypatch.setattr(bmm.opennebula.client, "connect", lambda url=None, auth=None: one)
    return one


def test_dry_run_prints_every_type_and_changes_nothing(tmp_path, cli_one):
    inventory = tmp_path / "nodes.toml"
    inventory.write_text(import_tilera(blueprint_text())[0])
    result = CliRunner().invoke(main, ["one", "register", "--dry-run", "--inventory", str(inventory)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("would create   template tp64.8x8: instance type, TILEPro64, 64 (8x8) tiles: "
                               "10 board(s)") for line in lines), result.output
    assert ("skip     template tgx.10x10: instance type, TILE-Gx100, 100 (10x10) tiles: no board in the "
            "inventory serves it, not created") in lines
    assert sum(line.startswith("skip     template ") for line in lines) == 5
    assert cli_one.calls == []
    result = CliRunner().invoke(main, ["one", "register", "--inventory", str(inventory)])
    assert result.exit_code == 0 and "create   template tp64.8x8" in result.output
    result = CliRunner().invoke(main, ["one", "register", "--dry-run", "--inventory", str(inventory)])
    assert "would" not in result.output and "ok       template tp64.8x8" in result.output


def _apply(one, inventory):
    for change in register.plan(one, inventory):
        if change.run is not None:
            change.run()


def test_boards_get_a_root_filesystem_datastore_that_keeps_uploads_compressed():
    """oned's downloader unpacks a compressed upload unless NO_DECOMPRESS: a board's
    rootfs.tar.gz needs a datastore that keeps it; a server's disk.raw.gz still decompresses."""
    one = FakeOne()
    _apply(one, blueprint_nodes())
    stores = {d.NAME: d.TEMPLATE for d in one.objects["datastore"]}
    assert stores[register.ROOTFS_DS]["NO_DECOMPRESS"] == "YES"
    assert (stores[register.ROOTFS_DS]["TM_MAD"], stores[register.ROOTFS_DS]["DS_MAD"]) == ("bmm", "fs")
    assert "NO_DECOMPRESS" not in stores[register.IMAGE_DS]
    again = by_name(register.plan(one, blueprint_nodes()))
    assert again[("datastore", register.ROOTFS_DS)].action == "ok"


def test_servers_alone_get_no_root_filesystem_datastore():
    one = FakeOne()
    _apply(one, nodes(s1=server("s1")))
    assert register.ROOTFS_DS not in {d.NAME for d in one.objects["datastore"]}
