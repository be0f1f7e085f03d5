"""What each OpenNebula action means for one kind of machine.

A kind is a vmm_drivers.base.Kind subclass composed of parts (power, boot, disk, transport).
Built-in kinds: `localdisk` (the Convey shape: GrubBoot + LvmDisk + SshTransport + any power)
and `netboot` (the Tilera shape: TFTP/NFS from a proxy). They are registered in bmm.kinds; a
site adds one in bmm.toml: `[kinds] mykind = "package.module:Class"`.
"""
