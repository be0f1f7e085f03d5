"""What each OpenNebula action means for one kind of machine.

A kind is a MachineDriver subclass. Built-in kinds: `localdisk` (the Convey shape: LVM +
GRUB2 on the node's own disk) and `netboot` (the Tilera shape: TFTP/NFS from a proxy). A site
can add a kind in bmm.toml: `[kinds] mykind = "package.module:Class"`.
"""
