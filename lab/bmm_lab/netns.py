"""Network namespaces and veth pairs for lab nodes (iproute2, argv only)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from bmm_lab import LabError
from bmm.runner import run

IP_TIMEOUT = 10.0


def ns_exec_argv(ns: str, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside network namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def ns_argv(ns: str | None, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside network namespace `ns`, or `argv` itself when ns is None."""
    if not ns:
        return list(argv)
    return ns_exec_argv(ns, list(argv))


def _ip_json(*args: str) -> list:
    out = run(["ip", "-j", *args], timeout=IP_TIMEOUT).stdout
    return json.loads(out) if out.strip() else []


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this host already has an address in or a route to."""
    nets: list[ipaddress.IPv4Network] = []
    for link in _ip_json("-4", "addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in _ip_json("-4", "route", "show", "table", "all"):
        dst = r.get("dst", "")
        if not dst or dst == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
        except ValueError:
            continue
    return nets


def overlaps(net: ipaddress.IPv4Network, used: list[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    return [u for u in used if u.overlaps(net) and u.prefixlen > 0]


def list_ns(prefix: str) -> list[str]:
    out = run(["ip", "netns", "list"], timeout=IP_TIMEOUT, check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def list_links(prefix: str) -> list[str]:
    names = []
    for link in _ip_json("link", "show"):
        name = link.get("ifname", "")
        if name.startswith(prefix):
            names.append(name)
    return names


def ns_pids(ns: str) -> list[int]:
    res = run(["ip", "netns", "pids", ns], timeout=IP_TIMEOUT, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def create_node_net(*, ns: str, veth_host: str, veth_tmp: str, host_addr: str, addr: str,
                    prefixlen: int, mac_node: str, mac_host: str, node: str) -> None:
    """netns `ns` with eth0 (addr) whose peer `veth_host` (host_addr) sits in the root ns."""
    batch_root = "\n".join([
        f"netns add {ns}",
        f"link add {veth_host} address {mac_host} type veth peer name {veth_tmp} address {mac_node} netns {ns}",
        f"addr add {host_addr}/{prefixlen} dev {veth_host}",
        f"link set {veth_host} up",
    ]) + "\n"
    batch_ns = "\n".join([
        f"link set {veth_tmp} name eth0",
        f"addr add {addr}/{prefixlen} dev eth0",
        "link set lo up",
        "link set eth0 up",
        f"route add default via {host_addr}",
    ]) + "\n"
    for value in (ns, veth_host, veth_tmp, host_addr, addr, mac_node, mac_host):
        if any(c.isspace() for c in value) or not value:
            raise LabError(f"bad network name or address {value!r}", node=node)
    res = run(["ip", "-batch", "-"], input=batch_root, timeout=IP_TIMEOUT, check=False)
    if not res.ok:
        raise LabError(f"cannot create netns {ns} / veth {veth_host}: {res.stderr.strip()}", node=node)
    res = run(["ip", "-n", ns, "-batch", "-"], input=batch_ns, timeout=IP_TIMEOUT, check=False)
    if not res.ok:
        raise LabError(f"cannot configure eth0 in netns {ns}: {res.stderr.strip()}", node=node)


def delete_ns(ns: str) -> None:
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=IP_TIMEOUT)


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=IP_TIMEOUT)
