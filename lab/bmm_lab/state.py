"""DIR/lab.json: the state file every lab command and the daemon read."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bmm_lab import LabError

STATE_FILE = "lab.json"


def path(lab_dir: Path | str) -> Path:
    return Path(lab_dir) / STATE_FILE


def netboot_dir(lab_dir: Path | str) -> Path:
    """Where the board half keeps its files (TFTP and NFS roots, the PDU's keys and log)."""
    return Path(lab_dir) / "netboot"


def load(lab_dir: Path | str, *, missing_ok: bool = False) -> dict | None:
    p = path(lab_dir)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise LabError(f"no lab in {lab_dir} (no {STATE_FILE}); run `bmm lab up --dir {lab_dir}`") from None
    except json.JSONDecodeError as exc:
        raise LabError(f"{p} is damaged: {exc}") from None


def save(lab_dir: Path | str, data: dict) -> None:
    p = path(lab_dir)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def node(lab: dict, name: str) -> dict:
    for n in lab.get("nodes", []):
        if n["name"] == name:
            return n
    raise LabError(f"no node {name!r} in this lab (nodes: {', '.join(n['name'] for n in lab.get('nodes', []))})")
