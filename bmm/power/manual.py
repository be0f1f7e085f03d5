"""Manual power: a person switches the machine. bmm cannot know its state ("unknown"), and
every change fails at once with instructions for the operator."""

from __future__ import annotations

from bmm import settings
from bmm.power.base import Power
from bmm.settings import Setting

VERBS = {
    "on": "switch node {node} on (press its power button)",
    "off": "switch node {node} off (hold its power button, or cut its power)",
    "soft_off": "shut node {node} down from its OS (or press its power button briefly)",
    "reset": "reset node {node} (press its reset button, or switch it off and on)",
    "cycle": "switch node {node} off, wait a few seconds, and switch it on again",
}


class ManualPower(Power):
    driver = "manual"
    SETTINGS = {**Power.SETTINGS, "instructions": Setting(settings.string, "extra text shown to the operator")}

    @property
    def endpoint(self) -> str:
        return "(operator)"

    def status(self) -> str:
        return "unknown"

    def instructions(self, action: str) -> str:
        text = (f"bmm cannot {action.replace('_', ' ')} node {self.node}: its power driver is "
                f"'manual'. Please {VERBS[action].format(node=self.node)}")
        extra = self.settings.get("instructions")
        if extra:
            text += f". {extra.rstrip('.')}"
        return text + (f". Then check the node (`bmm power status {self.node}` reports unknown for "
                       f"manual nodes; `ssh` to it to see it is up)")

    def _fail(self, action: str):
        raise self.fatal(self.instructions(action))

    def on(self) -> str:
        self._fail("on")

    def off(self) -> str:
        self._fail("off")

    def soft_off(self) -> str:
        self._fail("soft_off")

    def reset(self) -> str:
        self._fail("reset")

    def cycle(self) -> str:
        self._fail("cycle")
