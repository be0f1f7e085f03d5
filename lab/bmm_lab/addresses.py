"""The lab's address plan, in one place.

A lab owns one network 10.X.0.0/16 and one block of PORT_BLOCK ports on this host, both picked
at `up` under the host-wide lock (so two labs never share either):
- node n (n >= 1, servers first) lives in its own network namespace at 10.X.n.2/24, and this
  host reaches it through the veth peer 10.X.n.1;
- the board half's shared services sit on the root namespace's lo: the proxy (TFTP, NFS) at
  10.X.0.1, the PDU at 10.X.0.2;
- ports: port_base + n is server n's BMC (ipmi_sim, n < BOARD_PORT_OFFSET), and
  port_base + BOARD_PORT_OFFSET + PORT_* the board half's services.
"""

from __future__ import annotations

from bmm.runner import run
from bmm_lab import LabError

PORT_BLOCK = 100
BOARD_PORT_OFFSET = 50
PORT_PDU_TELNET = 0
PORT_PDU_SSH = 1
PORT_TFTP = 2
PORT_NFS = 3
PORT_MOUNT = 4
IP_TIMEOUT = 10.0


def port_base(x: int) -> int | None:
    """The port block of network 10.X.0.0/16 (None when it would not fit below 65536)."""
    base = 30000 + PORT_BLOCK * x
    return base if base + PORT_BLOCK - 1 <= 65535 else None


def node_addresses(x: int, idx: int) -> tuple[str, str]:
    """(this host's side, the node's side) of node idx's veth pair."""
    return f"10.{x}.{idx}.1", f"10.{x}.{idx}.2"


def bmc_port(base: int, idx: int) -> int:
    return base + idx


def board_port(lab: dict, i: int) -> int:
    """The port of the board half's service i (PORT_*)."""
    ports = lab.get("ports") or {}
    if "board_base" in ports:
        return int(ports["board_base"]) + i
    return int(lab["port_base"]) + BOARD_PORT_OFFSET + i


def _shared(lab: dict, host: int) -> str:
    net = str(lab.get("net") or "")
    parts = net.split("/")[0].split(".")
    if len(parts) != 4 or not net.endswith("/16"):
        raise LabError(f"the lab has no 10.X.0.0/16 network (net={net!r}); boards need one")
    return f"{parts[0]}.{parts[1]}.0.{host}"


def proxy_addr(lab: dict) -> str:
    """The proxy's own address (TFTP, NFS): 10.X.0.1 on the root namespace's lo."""
    return _shared(lab, 1)


def pdu_addr(lab: dict) -> str:
    """The PDU's address: 10.X.0.2 on the root namespace's lo."""
    return _shared(lab, 2)


def clients(lab: dict) -> list[str]:
    """Who may use the shared services: this host and the lab's network."""
    out = ["127.0.0.1"]
    if lab.get("net"):
        out.append(str(lab["net"]))
    return out


def ensure_addr(addr: str) -> None:
    res = run(["ip", "addr", "replace", f"{addr}/32", "dev", "lo"], timeout=IP_TIMEOUT, check=False)
    if not res.ok:
        raise LabError(f"cannot add {addr}/32 to lo: {res.stderr.strip()}")


def remove_addr(addr: str) -> None:
    run(["ip", "addr", "del", f"{addr}/32", "dev", "lo"], timeout=IP_TIMEOUT, check=False)
