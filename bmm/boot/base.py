"""The Boot part: how a machine is made to boot an instance, and back.

A method declares its `[boot]` keys in SETTINGS; validate() checks a table without touching a
machine. An instance of the part holds one node's settings; the kind calls its methods with
an executor on the machine (or its proxy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bmm import settings
from bmm.settings import Setting


class Boot:
    method = "abstract"
    SETTINGS: dict[str, Setting] = {}

    def __init__(self, node: str, table: Mapping[str, Any]):
        self.node = node
        self.settings = dict(table)

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        return settings.check_table(table, cls.SETTINGS, skip=("method",))
