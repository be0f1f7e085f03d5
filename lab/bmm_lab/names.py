"""Names of everything a lab creates. Every name carries the lab id, so a lab only ever
touches what it created, and `down` can find leftovers by scanning."""

from __future__ import annotations

import re
import secrets

ID_RE = re.compile(r"^[0-9a-f]{6}$")
BOARD_IDX_BASE = 100


def new_id() -> str:
    return secrets.token_hex(3)


def check_id(lab_id: str) -> str:
    if not ID_RE.match(lab_id or ""):
        raise ValueError(f"bad lab id {lab_id!r}")
    return lab_id


def ns_prefix(lab_id: str) -> str:
    return f"bmmlab-{check_id(lab_id)}-"


def ns_name(lab_id: str, node: str) -> str:
    return ns_prefix(lab_id) + node


def link_prefix(lab_id: str) -> str:
    return f"bl{check_id(lab_id)}"


def veth_host(lab_id: str, idx: int) -> str:
    return f"{link_prefix(lab_id)}h{idx}"


def veth_node_tmp(lab_id: str, idx: int) -> str:
    return f"{link_prefix(lab_id)}n{idx}"


def vg_name(lab_id: str, n: int) -> str:
    return f"{link_prefix(lab_id)}s{n}vg"


def server_name(n: int) -> str:
    return f"server{n}"


def board_name(n: int) -> str:
    return f"board{n}"


def mac(lab_id: str, idx: int, host_side: bool = False) -> str:
    """A stable, locally administered MAC for a node (or its root-ns peer)."""
    first = 0x06 if host_side else 0x02
    b = bytes.fromhex(check_id(lab_id))
    return ":".join(f"{x:02x}" for x in (first, b[0], b[1], b[2], idx // 256, idx % 256))
