"""Boot mechanisms: how a node is made to boot what bmm chose.

A node's `[boot]` table names its method; each method is a Boot part (bmm.boot.base) that
declares its settings. Imported on first use.
"""

from __future__ import annotations

BOOT_METHODS = {
    "grub": "bmm.boot.grub:GrubBoot",
    "nfsroot": "bmm.boot.netboot:NfsRootBoot",
    "tftp2stage": "bmm.boot.netboot:Tftp2StageBoot",
}


def boot_class(method: str):
    from bmm.boot.base import Boot
    from bmm.plugins import load

    return load(BOOT_METHODS[method], Boot, what=f"boot method {method}")
