"""What the lab's firmware switches: a machine with power. Servers (bmm_lab.server) and boards
(bmm_lab.board) subclass it; the firmware (bmm_lab.firmware) holds one per node. Its own
module so that the machines and the firmware do not import each other."""

from __future__ import annotations


class Machine:
    """A power-switched machine of the lab. Subclass and implement the first four methods."""

    name: str = "?"

    def powered(self) -> bool:
        raise NotImplementedError

    def power_on(self) -> None:
        raise NotImplementedError

    def power_off(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.power_off()
        self.power_on()

    def soft_off(self) -> None:
        self.power_off()

    def state(self) -> str:
        return "running" if self.powered() else "off"

    def detail(self) -> str:
        return ""

    def os_request(self, action: str) -> None:
        """The OS inside asked to reboot or power off (the shims)."""
        if action == "reboot":
            self.reset()
        else:
            self.power_off()

    def close(self) -> None:
        self.power_off()

