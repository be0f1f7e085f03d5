"""OpenNebula's driver contract: input decoding, the VM XML, replies, monitor messages."""
