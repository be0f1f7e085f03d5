"""Inspection: read a machine's hardware from the machine itself, as Ironic's inspector or
MAAS commissioning do, and compare it with what the inventory says.

`bmm nodes inspect` logs in to the node's own OS (a local-disk server's home OS, a netboot
board's booted OS) with the node's [ssh] settings and runs a fixed set of read-only
commands: standard tools when the OS has them (`lscpu -J`, `lsblk -J -b`, `ip -j link`,
`lspci -nn -mm`), /proc and /sys otherwise, so a busybox board answers as well as a full
distribution. Every command is an argv list with its own timeout, under the node's deadline.

- probe: the commands and the ssh session (the only module that talks to a machine);
- parse: pure functions from what those commands print to facts;
- facts: the facts (CPU, memory, disks, NICs, PCI, firmware, BMC) and their JSON form;
- pci, pciids: PCI functions, which are FPGAs/GPUs/accelerators, OpenNebula's PCI format;
- diff: where the facts and the inventory disagree (short lines, no secrets);
- attributes: the host attributes SYSTEM_HOST adds from an inspection;
- run: many nodes at once, bounded, with an overall deadline; results go to the state DB.

Inspection never changes what the scheduler gives a tenant: capacity (TOTALCPU,
TOTALMEMORY, disk) stays the inventory's, and a disagreement is flagged, not applied.
docs/inspection.md is the user's guide.
"""
