"""Importing the legacy tilera_boards file: the blueprint's text, nova's rows, broken rows."""

import os
import tomllib

import pytest
from click.testing import CliRunner

from bmm.cli import main
from bmm.inventory import check_inventory_data, validate_inventory
from bmm.tilera import import_tilera, parse_tilera_boards
from tests.support import REPO

BLUEPRINT = os.path.join(REPO, "tests", "data", "tilera_boards.blueprint")

# nova/tests/baremetal/test_tilera.py, as quoted in reference/baremetal-anchors.md §1.3
NOVA_ROW = ('6  10.0.2.7  00:1A:CA:00:58:5C 10 16218 917 476 1 tilera_hv 1 {"vendor":"tilera",'
            '"model":"TILEmpower","arch":"TILEPro64","features":["8x8Grid","32bVLIW","5.6MBCache",'
            '"443BOPS","37TbMesh","700MHz-866MHz","4DDR2","2XAUIMAC/PHY","2GbEMAC"],'
            '"topology":{"cores":"64"}}')

MIXED = f"""\
# board_id ip mac vcpus memory_mb local_gb memory_mb_used local_gb_used hv_type hv_ver cpu_info
{NOVA_ROW}
7  10.0.2.8  00:1A:CA:00:58:5D 10 16218 917 0 0 tilera_hv 1 {{"vendor": "tilera", "model": "TILEmpower",
    "arch": "TILEPro64", "features": ["8x8 Grid", "32b VLIW"],
    "topology": {{"cores": "64"}}}}
8  10.0.2.9  00:1A:CA:00:58:5E 10 16218 917 0 0 tilera_hv 1 {{"vendor":"tilera" "model":"x"}}
9  10.0.2.10 00:1A:CA:00:58:5F 10 16218 917 0 0 tilera_hv {{"vendor":"tilera"}}
10 10.0.2.11 00:1A:CA:00:58:60 10 16218 917 0 0 tilera_hv 1 \\
   # a comment between continuation lines
   {{"vendor":"tilera","arch":"TILEPro64",\\
    "model":"TILEmpower"}}
11 10.0.2.12 00:1A:CA:00:58:ZZ 10 16218 917 0 0 tilera_hv 1 {{}}
6  10.0.2.13 00:1A:CA:00:58:61 10 16218 917 0 0 tilera_hv 1 {{"arch":"TILEPro64"}}
12 00:1A:CA:00:58:62 ten 16218 917 0 0 tilera_hv 1 {{"arch":"TILEPro64"}}
garbage here
13 00:1A:CA:00:58:63 10 16218 917 0 0 tilera_hv 1 {{"arch":"TILEPro64"}} trailing
"""


def blueprint_text() -> str:
    with open(BLUEPRINT) as f:
        return f.read()


def test_the_blueprint_rows_import():
    result = parse_tilera_boards(blueprint_text())
    assert result.errors == []
    assert [b.board_id for b in result.boards] == list(range(10))
    assert [b.line for b in result.boards] == [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    b0, b9 = result.boards[0], result.boards[9]
    assert (b0.ip, b0.mac, b0.vcpus, b0.memory_mb, b0.local_gb) == (None, "00:1a:ca:00:57:90", 10, 16218, 917)
    assert (b0.memory_mb_used, b0.local_gb_used, b0.hv_type, b0.hv_ver) == (476, 1, "tilera_hv", "1")
    assert (b9.mac, b9.memory_mb, b9.local_gb, b9.memory_mb_used) == ("00:1a:ca:00:58:38", 16385, 1000, 0)
    # the printed JSON is cut off after "37TbMesh",: closed, kept, and flagged
    assert b0.cpu_info == {"vendor": "tilera", "model": "TILEmpower", "arch": "TILEPro64",
                           "features": ["8x8Grid", "32bVLIW", "5.6MBCache", "443BOPS", "37TbMesh"]}
    assert all(b.repaired for b in result.boards)
    assert [w.line for w in result.warnings] == [b.line for b in result.boards]
    assert "cut off" in str(result.warnings[0]) and str(result.warnings[0]).startswith("line 2: board 0:")


def test_strict_refuses_cut_off_json_with_line_numbers():
    result = parse_tilera_boards(blueprint_text(), strict=True)
    assert result.boards == []
    assert len(result.errors) == 10
    assert str(result.errors[0]).startswith("line 2: board 0: cpu_info is not valid JSON (cut off")


def test_the_nova_style_row_with_ip_imports():
    result = parse_tilera_boards(NOVA_ROW + "\n")
    assert result.errors == [] and result.warnings == []
    (b,) = result.boards
    assert (b.board_id, b.ip, b.mac, b.line) == (6, "10.0.2.7", "00:1a:ca:00:58:5c", 1)
    assert b.cpu_info["topology"] == {"cores": "64"} and len(b.cpu_info["features"]) == 9


def test_broken_rows_are_named_with_line_numbers_and_good_rows_still_import():
    result = parse_tilera_boards(MIXED)
    assert [(b.board_id, b.line) for b in result.boards] == [(6, 2), (7, 3), (10, 8)]
    errors = [str(e) for e in result.errors]
    assert errors[0].startswith("line 6: board 8: cpu_info is not valid JSON (Expecting ',' delimiter")
    assert errors[1] == ("line 7: board 9: wrong field count: found 10, expected 11 (board_id ip mac vcpus "
                         "memory_mb local_gb memory_mb_used local_gb_used hv_type hv_ver cpu_info)")
    assert errors[2] == "line 12: board 11: mac '00:1A:CA:00:58:ZZ' is not a MAC address"
    assert errors[3] == "line 13: board 6: board id 6 is already defined on line 2"
    assert errors[4] == "line 14: board 12: vcpus 'ten' is not a non-negative integer"
    assert errors[5] == "line 15: not a board row (a row starts with a numeric board_id): 'garbage here'"
    assert errors[6].startswith("line 16: board 13: cpu_info is not valid JSON (Extra data")
    assert len(errors) == 7
    spanning = result.boards[1]
    assert spanning.cpu_info["features"] == ["8x8 Grid", "32b VLIW"]  # spaces inside JSON survive
    assert result.boards[2].cpu_info == {"vendor": "tilera", "arch": "TILEPro64", "model": "TILEmpower"}


def test_json_error_points_at_the_physical_line_of_a_spanning_row():
    text = ('1 00:1A:CA:00:00:01 1 1024 10 0 0 tilera_hv 1 {"vendor":"tilera",\n'
            '   "model" "TILEmpower"}\n')
    (error,) = parse_tilera_boards(text).errors
    assert str(error).startswith("line 1: board 1: cpu_info is not valid JSON (Expecting ':' delimiter, line 2)")


def test_a_row_start_after_a_backslash_begins_a_new_row():
    text = ('1 00:1A:CA:00:00:01 1 1024 10 0 0 tilera_hv 1 {"arch":"a", \\\n'
            '2 10.0.0.2 00:1A:CA:00:00:02 1 1024 10 0 0 tilera_hv 1 {"arch":"b"}\n')
    result = parse_tilera_boards(text)
    assert [b.board_id for b in result.boards] == [1, 2]
    assert result.boards[0].repaired and not result.boards[1].repaired


def test_the_same_board_twice_is_refused():
    result = parse_tilera_boards(blueprint_text() + "\n" + NOVA_ROW + "\n")
    assert len(result.boards) == 10
    assert [str(e) for e in result.errors] == ["line 33: board 6: board id 6 is already defined on line 20"]


def test_imported_toml_passes_validate_as_written():
    nova = NOVA_ROW.replace("6  10.0.2.7  00:1A:CA:00:58:5C", "60  10.0.2.7  00:1A:CA:00:60:00")
    text, result = import_tilera(blueprint_text() + "\n" + nova + "\n")
    assert result.errors == []
    data = tomllib.loads(text)
    nodes, problems = check_inventory_data(data, "imported.toml")
    assert problems == []
    assert sorted(nodes) == sorted([f"tilera-{i}" for i in range(10)] + ["tilera-60"])
    n0 = nodes["tilera-0"]
    # arch as nova.conf's --cpu_arch has it, the processor kept as cpu_model; the whole
    # board's 64 tiles, not the file's vcpus 10
    assert (n0.kind, n0.arch, n0.model, n0.cpus, n0.memory_mb, n0.disk_gb) == (
        "netboot", "tilepro64", "TILEmpower", 64, 16218, 917)
    assert (n0.hardware["cpu_model"], n0.hardware["tile_grid"]) == ("TILEPro64", "8x8")
    assert n0.macs == ("00:1a:ca:00:57:90",) and n0.ip is None
    assert n0.boot.method == "nfsroot" and n0.boot.get("board") == 0
    assert n0.power.driver == "manual"
    assert n0.hardware["vendor"] == "tilera"
    n60 = nodes["tilera-60"]
    assert n60.ip == "10.0.2.7" and n60.ssh.address == "10.0.2.7"
    assert n60.hardware["topology"]["cores"] == "64"
    # the operator is told what to fill in, and the outlet is never computed
    block = text[text.index("[nodes.tilera-3.power]"):]
    assert "FILL IN" in block and '#   driver        = "pdu"' in block
    assert "#   outlet        = <outlet of board 3>" in block
    assert "cut off" in text[text.index("[nodes.tilera-3]"):]


def test_prefix_and_odd_values():
    text, result = import_tilera('5 00:1A:CA:00:00:05 2 2048 0 0 0 hv 1 {"model":"m","x y":null,"n":1.5}\n',
                                 prefix="tile")
    data = tomllib.loads(text)
    node = data["nodes"]["tile5"]
    assert "disk_gb" not in node and node["arch"] == "unknown"
    assert node["hardware"] == {"model": "m", "n": 1.5}
    assert any("null" in str(w) for w in result.warnings)
    nodes, problems = check_inventory_data(data, "x")
    assert problems == [] and "tile5" in nodes


# ---------------------------------------------------------------------- the command

def run(*args, input=None):
    return CliRunner().invoke(main, ["nodes", *args], input=input)


def test_cli_imports_the_blueprint_to_stdout():
    result = run("import-tilera", BLUEPRINT)
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.stdout)
    assert len(data["nodes"]) == 10
    assert "line 2: board 0: warning: cpu_info was cut off" in result.stderr
    assert "10 boards imported" in result.stderr


def test_cli_partial_import_reports_lines_and_exits_1(tmp_path):
    src = tmp_path / "tilera_boards"
    src.write_text(MIXED)
    out = tmp_path / "nodes.toml"
    result = run("import-tilera", str(src), "-o", str(out))
    assert result.exit_code == 1
    assert f"{src}: line 6: board 8: cpu_info is not valid JSON" in result.stderr
    assert f"{src}: line 7: board 9: wrong field count" in result.stderr
    assert "3 boards imported, 7 rows skipped" in result.stderr
    assert result.stdout == ""
    assert validate_inventory(out) == []
    check = run("validate", "--inventory", str(out))
    assert check.exit_code == 0 and "3 nodes OK" in check.stdout


def test_cli_refuses_to_overwrite_and_reports_nothing_imported(tmp_path):
    out = tmp_path / "nodes.toml"
    out.write_text("keep me")
    result = run("import-tilera", BLUEPRINT, "-o", str(out))
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_text() == "keep me"
    assert run("import-tilera", BLUEPRINT, "-o", str(out), "--force").exit_code == 0
    assert "tilera-9" in out.read_text()
    bad = tmp_path / "bad"
    bad.write_text("1 2 3\n")
    result = run("import-tilera", str(bad))
    assert result.exit_code == 2 and "line 1" in result.stderr and result.stdout == ""
    assert run("import-tilera", str(tmp_path / "missing")).exit_code == 2


def test_cli_reads_stdin_and_warns_about_names_already_in_the_inventory(tmp_path):
    inv = tmp_path / "nodes.toml"
    inv.write_text(import_tilera(NOVA_ROW + "\n")[0])
    result = run("import-tilera", "-", "--inventory", str(inv), input=NOVA_ROW + "\n")
    assert result.exit_code == 0
    assert "already in" in result.stderr and "tilera-6" in result.stderr


@pytest.mark.parametrize("prefix", ["tilera-", "board"])
def test_cli_prefix(prefix):
    result = run("import-tilera", "-", "--prefix", prefix, input=NOVA_ROW + "\n")
    assert f"{prefix}6" in tomllib.loads(result.stdout)["nodes"]


# ---------------------------------------------------------------------- what a deploy needs

def row(board_id: int, cpu_info: str, vcpus: int = 10) -> str:
    return f"{board_id} 00:1A:CA:00:70:{board_id:02X} {vcpus} 16384 500 0 0 tilera_hv 1 {cpu_info}\n"


def imported(text: str):
    toml_text, result = import_tilera(text)
    nodes, problems = check_inventory_data(tomllib.loads(toml_text), "x")
    assert problems == []
    return nodes, result, toml_text


@pytest.mark.parametrize("cpu_info,arch,grid,cpus", [
    ('{"arch":"TILEPro64"}', "tilepro64", "8x8", 64),                       # the family says 8x8
    ('{"arch":"TILE64","features":["8x8Grid"]}', "tile64", "8x8", 64),
    ('{"arch":"TILE-Gx36"}', "tilegx", "6x6", 36),
    ('{"arch":"tilegx8072"}', "tilegx", "8x9", 72),                          # product number
    ('{"arch":"TILE-Gx","features":["10x10Grid"]}', "tilegx", "10x10", 100),
    ('{"arch":"TILE-Gx","tile_grid":"4x4"}', "tilegx", "4x4", 16),           # the file's own grid stays
])
def test_a_tilera_board_is_given_whole_by_its_tile_grid(cpu_info, arch, grid, cpus):
    nodes, result, _ = imported(row(1, cpu_info))
    node = nodes["tilera-1"]
    assert (node.arch, node.hardware["tile_grid"], node.cpus) == (arch, grid, cpus)
    assert result.warnings == []


def test_a_board_of_unknown_grid_keeps_vcpus_and_says_why():
    nodes, result, _ = imported(row(1, '{"arch":"TILE-Gx"}', vcpus=7))
    assert nodes["tilera-1"].cpus == 7 and "tile_grid" not in nodes["tilera-1"].hardware
    (warning,) = result.warnings
    assert str(warning).startswith("line 1: board 1: cpus = vcpus 7: the tile grid is unknown")
    assert "hardware.tile_grid" in str(warning)


def test_a_board_that_is_no_tilera_keeps_its_arch_and_vcpus():
    nodes, result, _ = imported(row(1, '{"arch":"aarch64","model":"Pi"}', vcpus=4))
    node = nodes["tilera-1"]
    assert (node.arch, node.cpus, node.model) == ("aarch64", 4, "Pi")
    assert "tile_grid" not in node.hardware and "cpu_model" not in node.hardware


def test_every_blank_a_deploy_needs_is_marked_fill_in():
    _, _, text = imported(row(4, '{"arch":"TILEPro64"}'))
    fill = [line for line in text.splitlines() if "FILL IN" in line]
    assert any("ip" in line for line in fill)
    assert any("PDU outlet" in line for line in fill)
    assert any("tftp_root" in line for line in fill)
    assert any("proxy" in line for line in fill)
    assert any("ssh key" in line for line in fill)
    for header in ("[nodes.tilera-4.proxy]", "[nodes.tilera-4.ssh]"):
        assert f"# {header}" in text                 # commented out: uncommenting fills it in


def test_the_blueprint_boards_serve_the_tp64_instance_type():
    from bmm import instance_types

    text, _ = import_tilera(blueprint_text())
    nodes, _ = check_inventory_data(tomllib.loads(text), "x")
    served, unserved, idle = instance_types.match(nodes.values())
    assert [m.itype.name for m in served] == ["tp64.8x8"] and idle == []
    assert len(served[0].boards) == 10 and (served[0].cpus, served[0].memory_mb) == (64, 16218)
    assert [t.name for t in unserved] == ["t64.8x8", "tgx.4x4", "tgx.6x6", "tgx.8x8", "tgx.10x10"]
