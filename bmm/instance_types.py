"""The Tilera field report's instance types, and which boards of an inventory can serve each.

The blueprint (reference/field-reports/000_*.txt, "Schema Changes in Bare metal implementation
for TILEmpower boards" and "UI Changes") adds six default instance types, each one whole board
of a Tilera architecture family and tile grid: `t64.8x8` (TILE64), `tp64.8x8` (TILEPro64: "a
TILEmpower board with a TILEPro64 processor having 64 cores"), `tgx.4x4`, `tgx.6x6`, `tgx.8x8`
and `tgx.10x10` (TILE-Gx). Its table gives every type memory_mb=16384, vcpus=1, local_gb=500;
bmm gives the whole board instead (one instance per machine), so a type's CPU and MEMORY are
those of the smallest board that serves it.

A board serves a type when its family and tile grid are the type's. Both are read from what
the board reports to OpenNebula (im_drivers/report.py: ARCH is the inventory's `arch`, and
every plain `[hardware]` key K is BMM_K), so the scheduler can be told the same thing:
- family: `arch`, else `hardware.cpu_model`, else `hardware.arch` (`tilepro64`, `TILEPro64`,
  `TILE-Gx36`, `tilegx8036`, ...);
- grid: `hardware.tile_grid` ("8x8"), else what the family name implies (TILE64 and TILEPro64
  are 8x8, TILE-Gx36 is 6x6), else a `hardware.features` entry "8x8Grid" (the blueprint's
  cpu_info), else a `hardware.topology` such as "8x8 tiles".
Each board yields the clause of SCHED_REQUIREMENTS that names exactly the attributes its
family and grid came from; a type's requirement is any of its boards' clauses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

TILE64, TILEPRO, TILEGX = "TILE64", "TILEPro", "TILE-Gx"


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    grid: tuple[int, int]
    processor: str                 # how the field report names the processor

    @property
    def grid_text(self) -> str:
        return f"{self.grid[0]}x{self.grid[1]}"

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    def describe(self) -> str:
        return f"{self.processor}, {self.tiles} ({self.grid_text}) tiles"


TYPES = (
    InstanceType("t64.8x8", TILE64, (8, 8), "TILE64"),
    InstanceType("tp64.8x8", TILEPRO, (8, 8), "TILEPro64"),
    InstanceType("tgx.4x4", TILEGX, (4, 4), "TILE-Gx16"),
    InstanceType("tgx.6x6", TILEGX, (6, 6), "TILE-Gx36"),
    InstanceType("tgx.8x8", TILEGX, (8, 8), "TILE-Gx64"),
    InstanceType("tgx.10x10", TILEGX, (10, 10), "TILE-Gx100"),
)

# Tilera's parts by tile count (TILE-Gx72 is 8x9; no type has it)
GRIDS = {9: (3, 3), 16: (4, 4), 36: (6, 6), 64: (8, 8), 72: (8, 9), 100: (10, 10)}

_FAMILY = (
    (re.compile(r"^(?:tilera)?tile(64)$"), TILE64),
    (re.compile(r"^(?:tilera)?tilepro(\d*)$"), TILEPRO),
    (re.compile(r"^(?:tilera)?tilegx(\d*)$"), TILEGX),
)
_GRID = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_FEATURE_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*grid\s*$", re.IGNORECASE)
_TOPOLOGY_GRID = re.compile(r"(\d+)\s*[xX]\s*(\d+)")
_GLOB = re.compile(r"([*?\[\\])")


def family_of(text: str) -> tuple[str, int | None] | None:
    """(family, tile count the name implies or None) for a Tilera processor name."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    for pattern, family in _FAMILY:
        m = pattern.match(key)
        if m:
            digits = m.group(1)
            if not digits:
                return family, None
            # TILE-Gx product numbers carry the tile count after a series digit (Gx8036, Gx3100)
            count = int(digits[1:]) if family == TILEGX and len(digits) == 4 else int(digits)
            return family, count
    return None


def parse_grid(text: str) -> tuple[int, int] | None:
    m = _GRID.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def glob_exact(value: str) -> str:
    """A value the scheduler's `=` (fnmatch) matches only by itself."""
    return _GLOB.sub(r"[\1]", value)


def _is(attribute: str, value: str) -> str:
    return f'{attribute} = "{glob_exact(value)}"'


@dataclass(frozen=True)
class Board:
    """What bmm can tell of one node as a Tilera board."""

    node: str
    family: str | None             # None: not a Tilera board
    grid: tuple[int, int] | None   # None: unknown (see problem)
    clause: str = ""               # SCHED_REQUIREMENTS matching this board's reported facts
    problem: str = ""              # why it serves no type, when it does not
    cpus: int = 0
    memory_mb: int = 0

    def serves(self, itype: InstanceType) -> bool:
        return not self.problem and self.family == itype.family and self.grid == itype.grid


def board_facts(node) -> Board:
    """The node as a Tilera board (family None when it is none)."""
    hardware: Mapping = getattr(node, "hardware", None) or {}
    base = dict(node=node.name, cpus=int(node.cpus), memory_mb=int(node.memory_mb))
    found = [(attribute, value, *parsed) for attribute, value in
             (("ARCH", node.arch), ("BMM_CPU_MODEL", hardware.get("cpu_model")), ("BMM_ARCH", hardware.get("arch")))
             if isinstance(value, str) and (parsed := family_of(value))]
    if not found:
        return Board(family=None, grid=None, **base)
    first = found[0]
    attribute, value, family, _ = first
    for other, other_value, other_family, _ in found[1:]:
        if other_family != family:
            return Board(family=family, grid=None, problem=f"its {attribute} {value} and {other} {other_value} "
                                                           "are different Tilera families", **base)
    # the name that tells the tile count (TILEPro64, TILE-Gx36) is required too, wherever it is
    counted = next((f for f in found if f[3]), None)
    sources = [first] + ([counted] if counted is not None and counted is not first else [])
    if any('"' in v for _, v, _, _ in sources):
        return Board(family=family, grid=None, problem=f"its {attribute} cannot be named in SCHED_REQUIREMENTS "
                                                       "(it holds a double quote)", **base)
    clauses = [_is(a, v) for a, v, _, _ in sources]
    implied = GRIDS.get(counted[3]) if counted is not None else None
    if counted is not None and implied is None:
        return Board(family=family, grid=None, problem=f"{counted[1]} has {counted[3]} tiles, not a Tilera grid",
                     **base)
    grid = None
    raw = hardware.get("tile_grid")
    if raw is not None:
        grid = parse_grid(str(raw))
        if grid is None or '"' in str(raw):
            return Board(family=family, grid=None,
                         problem=f'hardware.tile_grid {str(raw)[:20]!r} is not "<rows>x<columns>"', **base)
        if implied and grid != implied:
            return Board(family=family, grid=None, problem=f"hardware.tile_grid {raw} disagrees with {counted[1]} "
                                                           f"({implied[0]}x{implied[1]} tiles)", **base)
        clauses.append(_is("BMM_TILE_GRID", str(raw)))
    elif implied:
        grid = implied
    else:
        grid, clause = _grid_from_facts(hardware)
        if grid is None:
            return Board(family=family, grid=None, problem=f"a {family} whose tile grid is unknown: set "
                                                           'hardware.tile_grid (e.g. "6x6")', **base)
        clauses.append(clause)
    return Board(family=family, grid=grid, clause=" & ".join(clauses), **base)


def _grid_from_facts(hardware: Mapping) -> tuple[tuple[int, int] | None, str]:
    features = hardware.get("features")
    if isinstance(features, (list, tuple)):
        for entry in features:
            if isinstance(entry, str) and '"' not in entry and (m := _FEATURE_GRID.match(entry)):
                # report.py sends a list as one comma-joined value
                return (int(m.group(1)), int(m.group(2))), f'BMM_FEATURES = "*{glob_exact(entry)}*"'
    topology = hardware.get("topology")
    if isinstance(topology, str) and '"' not in topology and (m := _TOPOLOGY_GRID.search(topology)):
        return (int(m.group(1)), int(m.group(2))), _is("BMM_TOPOLOGY", topology)
    return None, ""


@dataclass(frozen=True)
class Match:
    itype: InstanceType
    boards: tuple[Board, ...]

    @property
    def cpus(self) -> int:
        return min(b.cpus for b in self.boards)

    @property
    def memory_mb(self) -> int:
        return min(b.memory_mb for b in self.boards)

    def requirements(self) -> str:
        """SCHED_REQUIREMENTS: a free bare-metal host that is one of these boards. OpenNebula's
        `&` and `|` have one precedence, left to right (expr_bool.y), hence every parenthesis."""
        clauses = sorted({b.clause for b in self.boards})
        return 'BAREMETAL = "YES" & RUNNING_VMS = 0 & (' + " | ".join(f"({c})" for c in clauses) + ")"


def match(nodes) -> tuple[list[Match], list[InstanceType], list[Board]]:
    """(types some board serves, types no board serves, Tilera boards that serve none)."""
    boards = [b for b in (board_facts(n) for n in nodes) if b.family is not None]
    served, unserved = [], []
    for itype in TYPES:
        mine = tuple(b for b in boards if b.serves(itype))
        (served.append(Match(itype, mine)) if mine else unserved.append(itype))
    idle = [b for b in boards if not any(b.serves(t) for t in TYPES)]
    return served, unserved, idle


def board_note(board: Board) -> str:
    """Why a Tilera board serves no instance type."""
    if board.problem:
        return board.problem
    return f"a {board.family} with {board.grid[0]}x{board.grid[1]} tiles: the field report has no such type"
