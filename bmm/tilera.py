"""Import the legacy nova-baremetal `tilera_boards` file into inventory TOML.

The file is read the way the blueprint prints it, not only the way nova's parser wanted it:

- `#` starts a comment line; blank lines separate rows.
- A row is `board_id [ip] mac vcpus memory_mb local_gb memory_mb_used local_gb_used hv_type
  hv_ver cpu_info`: 11 fields with the ip (nova's tests), 10 without (the blueprint).
- A trailing backslash continues a row on the next line, and `cpu_info` (JSON) may contain
  spaces and span lines, with or without backslashes.
- A physical line that starts with `<int> <mac or ip>` always starts a new row, even after a
  trailing backslash: in the printed blueprint each row's JSON is cut off and its last
  continuation runs into the next row.
- A cpu_info that is only cut off (its brackets never close) is closed and imported with a
  warning (`strict=True` makes that an error). Any other bad JSON, a wrong field count or a bad
  number is an error for that row only; the good rows still import. Every message carries the
  physical line number.

The TOML passes `bmm nodes validate` as written and marks with `FILL IN` what a deploy needs
that the file lacks (ip, PDU outlet, the proxy's files, bmm's ssh key; docs/boards.md). A
Tilera board is given whole: its `cpus` are its tiles (hardware.tile_grid, from the processor
or the cpu_info features, as bmm.instance_types reads them), not nova's vcpus.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bmm import instance_types
from bmm.settings import MAC_RE

FIELDS_WITH_IP = ("board_id", "ip", "mac", "vcpus", "memory_mb", "local_gb", "memory_mb_used",
                  "local_gb_used", "hv_type", "hv_ver", "cpu_info")
FIELDS_NO_IP = tuple(f for f in FIELDS_WITH_IP if f != "ip")

_MAC = r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
ROW_START_RE = re.compile(rf"^\s*\d+\s+(?:{_MAC}|{_IPV4})(?:\s|$)")


@dataclass(frozen=True)
class Board:
    line: int                      # physical line where the row starts (1-based)
    board_id: int
    ip: str | None
    mac: str
    vcpus: int
    memory_mb: int
    local_gb: int
    memory_mb_used: int
    local_gb_used: int
    hv_type: str
    hv_ver: str
    cpu_info: dict[str, Any]
    repaired: bool = False         # cpu_info was cut off and has been closed


@dataclass(frozen=True)
class Message:
    line: int
    board: str | None
    text: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.board is not None:
            where += f": board {self.board}"
        return f"{where}: {self.text}"


@dataclass
class ParseResult:
    boards: list[Board] = field(default_factory=list)
    errors: list[Message] = field(default_factory=list)      # rows skipped
    warnings: list[Message] = field(default_factory=list)    # rows imported, but look at them


@dataclass
class _Row:
    parts: list[tuple[int, str]]   # (physical line number, text without trailing backslash)
    continued: bool                # the last part ended in a backslash

    @property
    def line(self) -> int:
        return self.parts[0][0]

    def text(self) -> tuple[str, list[tuple[int, int]]]:
        """The joined row, and (offset, line) marks to map an offset back to its line."""
        pieces, marks, offset = [], [], 0
        for lineno, part in self.parts:
            marks.append((offset, lineno))
            pieces.append(part)
            offset += len(part) + 1
        return " ".join(pieces), marks

    def json_open(self) -> bool:
        """cpu_info has started and its brackets are not balanced yet."""
        text, _ = self.text()
        start = text.find("{")
        return start >= 0 and bool(_scan_json(text[start:])[0])


def _scan_json(text: str) -> tuple[list[str], bool, bool]:
    """(stack of unclosed openers, ended inside a string, a closer did not match)."""
    stack: list[str] = []
    in_string = escape = False
    for ch in text:
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack or {"{": "}", "[": "]"}[stack[-1]] != ch:
                return stack, in_string, True
            stack.pop()
    return stack, in_string, False


def _line_of(offset: int, marks: list[tuple[int, int]]) -> int:
    line = marks[0][1]
    for start, lineno in marks:
        if start <= offset:
            line = lineno
    return line


def _split_physical(text: str) -> list[_Row]:
    rows: list[_Row] = []
    current: _Row | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        continues = current is not None and (current.continued or current.json_open())
        if not stripped:
            current = None                       # a blank line ends any row
            continue
        if stripped.startswith("#"):
            continue                             # comments, even between continuation lines
        body = raw.rstrip()
        backslash = body.endswith("\\")
        if backslash:
            body = body[:-1].rstrip()
        if continues and not ROW_START_RE.match(raw):
            current.parts.append((lineno, body.strip()))
            current.continued = backslash
            continue
        current = _Row(parts=[(lineno, body.strip())], continued=backslash)
        rows.append(current)
    return rows


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token)
        return True
    except ValueError:
        return False


def _parse_json(text: str, marks: list[tuple[int, int]], offset: int,
                strict: bool) -> tuple[dict | None, bool, str | None]:
    """(cpu_info, was repaired, error)."""
    try:
        value = json.loads(text)
        repaired = False
    except json.JSONDecodeError as exc:
        stack, in_string, mismatch = _scan_json(text)
        if not stack or in_string or mismatch or strict:
            where = f"line {_line_of(offset + exc.pos, marks)}"
            reason = exc.msg
            if stack and not in_string and not mismatch and strict:
                reason = "cut off: " + _unclosed(stack)
            return None, False, f"cpu_info is not valid JSON ({reason}, {where})"
        closed = re.sub(r"[\s,]+$", "", text) + "".join("}" if c == "{" else "]" for c in reversed(stack))
        try:
            value = json.loads(closed)
        except json.JSONDecodeError as exc2:
            return None, False, (f"cpu_info is not valid JSON ({_unclosed(stack)}, "
                                 f"and closing it fails: {exc2.msg})")
        repaired = True
    if not isinstance(value, dict):
        return None, False, f"cpu_info must be a JSON object, not {type(value).__name__}"
    return value, repaired, None


def _unclosed(stack: list[str]) -> str:
    return "unclosed " + " and ".join(repr(c) for c in reversed(stack))


def _parse_row(row: _Row, strict: bool) -> tuple[Board | None, Message | None, Message | None]:
    """(board, error, warning)."""
    text, marks = row.text()
    start = text.find("{")
    head = text[:start] if start >= 0 else text
    tokens = head.split()
    board = tokens[0] if tokens else "?"
    line = row.line

    def err(message: str) -> tuple[None, Message, None]:
        return None, Message(line, board if tokens else None, message), None

    if not re.fullmatch(r"\d+", board):
        return None, Message(line, None, f"not a board row (a row starts with a numeric board_id): "
                                         f"{text[:60]!r}"), None
    if start < 0:
        # nova's format: cpu_info is one whitespace-free token
        return err(f"missing cpu_info (a JSON object starting with '{{'); found {len(tokens)} fields, "
                   f"expected {len(FIELDS_NO_IP)} without ip or {len(FIELDS_WITH_IP)} with ip")
    with_ip = len(tokens) > 1 and _is_ip(tokens[1])
    names = FIELDS_WITH_IP if with_ip else FIELDS_NO_IP
    if len(tokens) + 1 != len(names):
        return err(f"wrong field count: found {len(tokens) + 1}, expected {len(names)} "
                   f"({' '.join(names)})")
    values = dict(zip(names[:-1], tokens))
    if not MAC_RE.match(values["mac"]):
        return err(f"mac {values['mac']!r} is not a MAC address")
    numbers = {}
    for key in ("vcpus", "memory_mb", "local_gb", "memory_mb_used", "local_gb_used"):
        if not re.fullmatch(r"\d+", values[key]):
            return err(f"{key} {values[key]!r} is not a non-negative integer")
        numbers[key] = int(values[key])
    for key in ("vcpus", "memory_mb"):
        if numbers[key] == 0:
            return err(f"{key} must be positive")
    cpu_info, repaired, error = _parse_json(text[start:], marks, start, strict)
    if error:
        return err(error)
    warning = None
    if repaired:
        warning = Message(line, board, "cpu_info was cut off (as in the printed blueprint); closed it "
                                       "and imported it - check the node's hardware facts")
    return Board(line=line, board_id=int(board), ip=values.get("ip"), mac=values["mac"].lower(),
                 cpu_info=cpu_info, repaired=repaired, hv_type=values["hv_type"],
                 hv_ver=values["hv_ver"], **numbers), None, warning


def parse_tilera_boards(text: str, *, strict: bool = False) -> ParseResult:
    """Every good board, and a message with a line number for every row that is not."""
    result = ParseResult()
    seen_ids: dict[int, int] = {}
    seen_macs: dict[str, int] = {}
    seen_ips: dict[str, int] = {}
    for row in _split_physical(text):
        board, error, warning = _parse_row(row, strict)
        if error:
            result.errors.append(error)
            continue
        duplicate = None
        if board.board_id in seen_ids:
            duplicate = f"board id {board.board_id} is already defined on line {seen_ids[board.board_id]}"
        elif board.mac in seen_macs:
            duplicate = f"mac {board.mac} is already used on line {seen_macs[board.mac]}"
        elif board.ip and board.ip in seen_ips:
            duplicate = f"ip {board.ip} is already used on line {seen_ips[board.ip]}"
        if duplicate:
            result.errors.append(Message(board.line, str(board.board_id), duplicate))
            continue
        seen_ids[board.board_id] = board.line
        seen_macs[board.mac] = board.line
        if board.ip:
            seen_ips[board.ip] = board.line
        if warning:
            result.warnings.append(warning)
        result.boards.append(board)
    return result


# --------------------------------------------------------------------------- TOML output

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_string(value: str) -> str:
    out = json.dumps(value, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _drop_nulls(value: Any, path: str, dropped: list[str]) -> Any:
    """TOML has no null: leave such facts out, and say which."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None:
                dropped.append(f"{path}{k}")
            else:
                out[str(k)] = _drop_nulls(v, f"{path}{k}.", dropped)
        return out
    if isinstance(value, list):
        kept = [_drop_nulls(v, path, dropped) for v in value if v is not None]
        if len(kept) != len(value):
            dropped.append(path.rstrip(".") + "[null]")
        return kept
    return value


def _linux_arch(family: str, tiles: int | None) -> str:
    """The node's `arch` for a Tilera family, as nova.conf's `--cpu_arch=tilepro64` and the
    kernels' architecture names have it (bmm.storage.rootfs matches image kernels by it)."""
    if family == instance_types.TILE64:
        return "tile64"
    if family == instance_types.TILEPRO:
        return "tilepro64" if tiles in (None, 64) else "tilepro"
    return "tilegx"


def board_facts(board: Board, hardware: dict) -> tuple[str | None, dict, instance_types.Board | None]:
    """(arch for the inventory, hardware with cpu_model and tile_grid added, the board's
    facts as instance types see them) for a Tilera cpu_info; (None, hardware, None) else."""
    arch = board.cpu_info.get("arch")
    parsed = instance_types.family_of(arch) if isinstance(arch, str) else None
    if parsed is None:
        return None, hardware, None
    hardware = dict(hardware)
    hardware.setdefault("cpu_model", arch)
    probe = SimpleNamespace(name=str(board.board_id), arch=arch, cpus=board.vcpus, memory_mb=board.memory_mb,
                            hardware=hardware)
    facts = instance_types.board_facts(probe)
    if facts.grid is not None and "tile_grid" not in hardware:
        hardware["tile_grid"] = f"{facts.grid[0]}x{facts.grid[1]}"
    return _linux_arch(parsed[0], parsed[1]), hardware, facts


def board_to_toml(board: Board, *, prefix: str = "tilera-", source: str = "tilera_boards",
                  warnings: list[Message] | None = None) -> str:
    """One [nodes.<prefix><board_id>] block that passes `bmm nodes validate` as written, with
    a `FILL IN` line for everything a deploy needs that the file does not have."""
    name = f"{prefix}{board.board_id}"
    table = f"nodes.{toml_key(name)}"
    dropped: list[str] = []
    hardware = _drop_nulls(board.cpu_info, "", dropped)
    if dropped and warnings is not None:
        warnings.append(Message(board.line, str(board.board_id),
                                f"cpu_info null values left out of hardware: {', '.join(dropped)}"))
    arch = board.cpu_info.get("arch")
    model = board.cpu_info.get("model")
    tilera_arch, hardware, facts = board_facts(board, hardware)
    out = [f"[{table}]",
           f"# from {source} line {board.line}: board {board.board_id}"
           f" ({board.hv_type} {board.hv_ver}; memory_mb_used/local_gb_used"
           f" {board.memory_mb_used}/{board.local_gb_used} not imported)"]
    if board.repaired:
        out.append("# CHECK: cpu_info was cut off in the source and closed on import; "
                   "complete [hardware] if facts are missing")
    out.append('kind      = "netboot"')
    if tilera_arch:
        out.append(f"arch      = {toml_string(tilera_arch)}          # cpu_info says {toml_string(arch)}, "
                   "kept as hardware.cpu_model")
    elif isinstance(arch, str) and arch.strip():
        out.append(f"arch      = {toml_string(arch)}")
    else:
        out.append('arch      = "unknown"          # FILL IN: cpu_info has no "arch"')
    if isinstance(model, str) and model.strip():
        out.append(f"model     = {toml_string(model)}")
    if facts is not None and facts.grid is not None:
        tiles = facts.grid[0] * facts.grid[1]
        out.append(f"cpus      = {tiles}                # the whole board: {facts.grid[0]}x{facts.grid[1]} tiles "
                   f"(the file says vcpus {board.vcpus})")
    else:
        if facts is not None and warnings is not None:
            warnings.append(Message(board.line, str(board.board_id),
                                    f"cpus = vcpus {board.vcpus}: the tile grid is unknown ({facts.problem})"))
        out.append(f"cpus      = {board.vcpus}")
    out.append(f"memory_mb = {board.memory_mb}")
    if board.local_gb > 0:
        out.append(f"disk_gb   = {board.local_gb}")
    out.append(f"macs      = [{toml_string(board.mac)}]")
    if board.ip:
        out.append(f"ip        = {toml_string(board.ip)}")
    else:
        out.append('# ip      = "<board address>"  # FILL IN: not in the source row; bmm reaches the board '
                   "there (ssh, tile-monitor)")
    out += [
        "",
        f"[{table}.power]",
        "# FILL IN: the board's PDU outlet. Until then power is manual (bmm asks nobody and",
        "# reports power as unknown) and the board cannot be deployed. Replace the line below with:",
        '#   driver        = "pdu"',
        '#   host          = "<PDU address>"',
        '#   protocol      = "telnet"          # or "ssh"; port: 23 / 22 unless set',
        '#   dialect       = "apc"             # the default; see docs/power.md',
        '#   user          = "<PDU user>"',
        '#   password_file = "/etc/one/bmm/secrets/pdu"',
        f"#   outlet        = <outlet of board {board.board_id}>   # from the rack wiring, never computed",
        'driver = "manual"',
        "",
        f"[{table}.boot]",
        "# FILL IN where the proxy differs from the blueprint's: tftp_root (default /tftpboot, holding",
        f"# vmlinux_{board.board_id}_nfs, or vmlinux_{board.board_id}_1 and vmlinux_{board.board_id}_2 "
        f"for tftp2stage), nfs_root (parent of fs_{board.board_id};",
        "# default tftp_root), tile_monitor (default: on the PATH), board (the id in the names of",
        "# the boot files the board fetches).",
        'method = "nfsroot"                # or "tftp2stage" (the field report\'s option 2)',
        f"board  = {board.board_id}",
        "",
        f"# FILL IN if the proxy is not this front-end ([{table}.proxy] absent: it is):",
        f"# [{table}.proxy]",
        '# host = "<proxy address>"',
        '# key  = "/var/lib/one/.ssh/id_bmm_proxy"',
        "",
        "# FILL IN unless oneadmin's own ssh key reaches the booted boards (address: ip):",
        f"# [{table}.ssh]",
        '# key         = "/var/lib/one/.ssh/id_bmm_boards"',
        '# known_hosts = "/var/lib/one/.ssh/known_hosts_boards"',
    ]
    if hardware:
        out += ["", f"[{table}.hardware]"]
        for key, value in hardware.items():
            out.append(f"{toml_key(key)} = {toml_value(value)}")
    return "\n".join(out) + "\n"


def import_tilera(text: str, *, prefix: str = "tilera-", source: str = "tilera_boards",
                  strict: bool = False) -> tuple[str, ParseResult]:
    """(inventory TOML for every good board, the parse result with errors and warnings)."""
    result = parse_tilera_boards(text, strict=strict)
    header = [
        f"# bmm inventory imported from {source} by `bmm nodes import-tilera`.",
        f"# {len(result.boards)} boards imported, {len(result.errors)} rows skipped.",
        "# Before use, fill in every line marked FILL IN (PDU outlets, addresses, the proxy's",
        "# files and bmm's ssh key), then run `bmm nodes validate` and `bmm one register`",
        "# (docs/boards.md walks through it). Boards boot by NFS root (fs_<board>); set",
        '# boot.method = "tftp2stage" for the two-stage TFTP boot.',
        "",
    ]
    blocks = [board_to_toml(b, prefix=prefix, source=source, warnings=result.warnings)
              for b in result.boards]
    result.warnings.sort(key=lambda m: m.line)
    return "\n".join(header) + "\n" + "\n".join(blocks), result
