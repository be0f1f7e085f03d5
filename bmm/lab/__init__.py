"""`bmm lab`: a simulated rack on this machine, built from real peers.

What is real: network namespaces and veths, OpenSSH servers as the nodes' operating systems,
`ipmi_sim` BMCs driven by `ipmitool -I lanplus`, LVM metadata on loop devices, GRUB environment
blocks written by `grub-editenv`/`grub-reboot`, the PDU and TFTP peers of the board half.
What is emulated: the firmware (one daemon decides what "power on" boots, following GRUB's
rules), LV activation when the kernel has no device-mapper (loop devices at the LV's offset),
and the guest's one-context package (CONTEXT iso -> ssh key + hostname).

See docs/lab.md (users) and docs/lab-internals.md (contract for the board half and tests).
"""

from bmm.errors import BmmError

DEFAULT_DIR = "/var/tmp/bmm-lab"


class LabError(BmmError):
    """A lab operation failed; the message names the node (when there is one) and the cause."""
