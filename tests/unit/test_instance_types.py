"""The field report's instance types: which boards serve which type, and a requirement that
OpenNebula's scheduler matches against what those boards really report (SYSTEM_HOST)."""

import hashlib

import pytest

from bmm import instance_types
from bmm.instance_types import TYPES, board_facts, family_of, match
from bmm.inventory import check_inventory_data
from im_drivers.report import HostReport
from tests.schedexpr import evaluate


def board(name: str, arch: str, cpus: int = 64, memory_mb: int = 16384, **hardware) -> dict:
    return {"kind": "netboot", "arch": arch, "model": "TILEmpower", "cpus": cpus, "memory_mb": memory_mb,
            "macs": ["02:00:00:" + ":".join(hashlib.sha256(name.encode()).hexdigest()[i:i + 2] for i in (0, 2, 4))],
            "power": {"driver": "manual"}, "boot": {"method": "nfsroot"}, "hardware": hardware}


def server(name: str) -> dict:
    return {"kind": "localdisk", "arch": "x86_64", "model": "PowerEdge", "cpus": 32, "memory_mb": 65536,
            "disk_gb": 100, "macs": ["02:00:00:00:99:01"], "ip": "10.0.0.9", "power": {"driver": "manual"},
            "boot": {"method": "grub"}, "storage": {"vg": "vg0"}}


def nodes(**tables):
    found, problems = check_inventory_data({"nodes": tables}, "nodes.toml")
    assert problems == []
    return [found[name] for name in tables]


def reported(node, running_vms: int = 0) -> dict:
    """The host's attributes as the scheduler sees them: SYSTEM_HOST as bmm's IM sends it
    (the same HostReport), plus the host's RUNNING_VMS."""
    attrs = {k: str(v) for k, v in HostReport(node, config=None).system_host()}
    attrs["RUNNING_VMS"] = str(running_vms)
    return attrs


# the lab's board table (bmm_lab.netboot.inventory): what test_netboot_lifecycle sees reported
LAB = dict(arch="tilepro64", vendor="tilera", cpu_model="TILEPro64", topology="8x8 tiles", tile_grid="8x8")


def test_the_table_is_the_field_reports():
    assert [(t.name, t.family, t.grid_text) for t in TYPES] == [
        ("t64.8x8", "TILE64", "8x8"), ("tp64.8x8", "TILEPro", "8x8"), ("tgx.4x4", "TILE-Gx", "4x4"),
        ("tgx.6x6", "TILE-Gx", "6x6"), ("tgx.8x8", "TILE-Gx", "8x8"), ("tgx.10x10", "TILE-Gx", "10x10")]


@pytest.mark.parametrize("text,expected", [
    ("TILEPro64", ("TILEPro", 64)), ("tilepro64", ("TILEPro", 64)), ("TILE64", ("TILE64", 64)),
    ("TILE-Gx36", ("TILE-Gx", 36)), ("tilegx", ("TILE-Gx", None)), ("TILE-Gx8036", ("TILE-Gx", 36)),
    ("TILE-Gx3100", ("TILE-Gx", 100)), ("Tilera TILE-Gx16", ("TILE-Gx", 16)),
    ("x86_64", None), ("TILEmpower", None), ("tile", None),
])
def test_families_by_name(text, expected):
    assert family_of(text) == expected


def test_boards_are_matched_by_family_and_grid_and_servers_are_left_alone():
    inv = nodes(
        lab1=board("lab1", **LAB), lab2=board("lab2", memory_mb=8192, **LAB),
        pro=board("pro", "TILEPro64", cpus=10, features=["8x8Grid", "32bVLIW"]),
        gx36=board("gx36", "tilegx", cpus=36, cpu_model="TILE-Gx36"),
        gx100=board("gx100", "tilegx", cpus=100, tile_grid="10x10"),
        gxfeat=board("gxfeat", "TILE-Gx", cpus=16, features=["4x4Grid"]),
        gxunknown=board("gxunknown", "tilegx", cpus=36),
        gx72=board("gx72", "TILE-Gx72", cpus=72),
        wrong=board("wrong", "tilepro64", tile_grid="6x6"),
        s1=server("s1"),
    )
    served, unserved, idle = match(inv)
    by_type = {m.itype.name: sorted(b.node for b in m.boards) for m in served}
    assert by_type == {"tp64.8x8": ["lab1", "lab2", "pro"], "tgx.4x4": ["gxfeat"], "tgx.6x6": ["gx36"],
                       "tgx.10x10": ["gx100"]}
    assert [t.name for t in unserved] == ["t64.8x8", "tgx.8x8"]
    notes = {b.node: instance_types.board_note(b) for b in idle}
    assert sorted(notes) == ["gx72", "gxunknown", "wrong"]
    assert "tile grid is unknown" in notes["gxunknown"] and "hardware.tile_grid" in notes["gxunknown"]
    assert "8x9" in notes["gx72"] and "no such type" in notes["gx72"]
    assert "disagrees" in notes["wrong"]
    tp64 = next(m for m in served if m.itype.name == "tp64.8x8")
    assert (tp64.cpus, tp64.memory_mb) == (10, 8192)          # the smallest board's


def test_a_requirement_matches_exactly_the_boards_of_its_type_as_they_report_themselves():
    inv = nodes(
        lab1=board("lab1", **LAB),
        pro=board("pro", "TILEPro64", features=["8x8Grid", "32bVLIW"]),
        t64=board("t64", "TILE64"),
        gx36=board("gx36", "tilegx", cpus=36, cpu_model="TILE-Gx36"),
        gx64=board("gx64", "tilegx", topology="8x8 mesh"),
        gx100=board("gx100", "tilegx", cpus=100, tile_grid="10x10"),
        gxfeat=board("gxfeat", "TILE-Gx", cpus=16, features=["4x4Grid"]),
        s1=server("s1"),
    )
    served, _, idle = match(inv)
    assert idle == []
    hosts = {n.name: reported(n) for n in inv}
    assert hosts["lab1"]["ARCH"] == "tilepro64" and hosts["lab1"]["BMM_TILE_GRID"] == "8x8"
    for m in served:
        expected = {b.node for b in m.boards}
        matched = {name for name, attrs in hosts.items() if evaluate(m.requirements(), attrs)}
        assert matched == expected, (m.itype.name, m.requirements())
    # a board that holds an instance is never chosen
    tp64 = next(m for m in served if m.itype.name == "tp64.8x8")
    assert not evaluate(tp64.requirements(), reported(inv[0], running_vms=1))


def test_a_requirement_names_what_each_board_reports():
    (lab,) = nodes(lab1=board("lab1", **LAB))
    assert board_facts(lab).clause == 'ARCH = "tilepro64" & BMM_TILE_GRID = "8x8"'
    (pro,) = nodes(pro=board("pro", "TILEPro64", features=["8x8Grid"]))
    assert board_facts(pro).clause == 'ARCH = "TILEPro64"'               # the name implies 8x8
    (gx,) = nodes(gx=board("gx", "tilegx", features=["6x6Grid"]))
    assert board_facts(gx).clause == 'ARCH = "tilegx" & BMM_FEATURES = "*6x6Grid*"'
    (m,) = [m for m in match([lab, pro])[0]]
    assert m.requirements() == ('BAREMETAL = "YES" & RUNNING_VMS = 0 & ((ARCH = "TILEPro64") | '
                                '(ARCH = "tilepro64" & BMM_TILE_GRID = "8x8"))')


def test_glob_characters_in_a_value_match_only_themselves():
    (gx,) = nodes(gx=board("gx", "TILE-Gx[36]", cpus=36))
    (m,) = match([gx])[0]
    assert board_facts(gx).clause == 'ARCH = "TILE-Gx[[]36]"'
    assert evaluate(m.requirements(), reported(gx))
    # unescaped, "[36]" would be a bracket expression matching "TILE-Gx3"
    (other,) = nodes(other=board("other", "TILE-Gx3", cpus=36, tile_grid="6x6"))
    assert not evaluate(m.requirements(), reported(other))


def test_the_evaluator_follows_opennebulas_grammar():
    host = {"A": "x", "N": "3"}
    assert evaluate('A = "x" & N = 3', host)
    assert not evaluate('A = "y" & N = 3 | N = 3 & A = "y"', host)     # one precedence, left to right
    assert evaluate('(A = "y" & N = 3) | (N = 3 & A = "x")', host)
    assert not evaluate('MISSING = "x"', host) and not evaluate('MISSING != "x"', host)
    assert not evaluate('A = ""', host) and evaluate("N > 2", host) and not evaluate('A = "X"', host)


def test_names_of_two_families_serve_no_type():
    (mixed,) = nodes(mixed=board("mixed", "tilepro64", cpu_model="TILE-Gx36"))
    served, _, idle = match([mixed])
    assert served == [] and "different Tilera families" in instance_types.board_note(idle[0])
