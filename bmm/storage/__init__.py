"""Node storage: LVM volumes, image reading, streaming and adaptation."""
